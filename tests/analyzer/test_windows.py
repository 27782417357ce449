"""Per-window timeline: stage shares come from the stage ns columns, class shares from attribution."""

from __future__ import annotations

import numpy as np
import pytest

from bottleneck_map.analyzer import STAGE_GROUPS, STAGES, analyze_full
from bottleneck_map.analyzer.windows import STAGE_PREFIX

KV_STARVED = dict(n_requests=40, rate_per_s=80, num_kv_blocks=24, prompt_tokens=48, output_tokens=40)


def test_window_stage_time_adds_up_to_the_stage_totals(sim_bundle):
    a = analyze_full(sim_bundle(**KV_STARVED), window_s=0.25)
    done = a.stages[a.stages["complete"]]
    for s in STAGES:
        assert a.timeline[STAGE_PREFIX + s].sum() == pytest.approx(float(done[s].sum()), rel=1e-9, abs=1), s
    assert done["requeue"].sum() > 0, "the scenario preempts, so requeue spans are placed"


def test_window_stage_share_agrees_with_the_map_on_a_kv_starved_run(sim_bundle):
    a = analyze_full(sim_bundle(**KV_STARVED), window_s=0.25)
    m = a.result
    group_share = {g: sum(m.stage(s).share for s in members) for g, members in STAGE_GROUPS.items()}
    assert group_share["queue"] > 0.3, "the run is dominated by waiting for KV blocks"
    # Weighted by the stage time in each window, the windows give back the map's group shares.
    totals = a.timeline[[STAGE_PREFIX + s for s in STAGES]].sum(axis=1).to_numpy()
    for g in STAGE_GROUPS:
        per_window = np.array([w.stage_share[g] for w in m.windows])
        assert float((per_window * totals).sum() / totals.sum()) == pytest.approx(group_share[g], abs=1e-9), g
    for w, tot in zip(m.windows, totals, strict=True):
        assert sum(w.stage_share.values()) == pytest.approx(1.0 if tot > 0 else 0.0)
    # kv_cache_capacity is a class, not a stage: it shows in class_share, and the window's verdict uses it.
    busiest = m.windows[int(np.argmax(totals))]
    assert busiest.stage_share["queue"] > 0.2
    assert set(busiest.class_share) <= {*m.windows[0].scores, "unattributed"}
    assert busiest.class_share["kv_cache_capacity"] > 0
    assert sum(busiest.class_share.values()) == pytest.approx(1.0)


def test_class_share_names_unattributed_time_without_steps(sim_bundle):
    a = analyze_full(sim_bundle(with_steps=False, **KV_STARVED), window_s=0.25)
    shares = [w.class_share for w in a.result.windows if w.class_share]
    assert any(s.get("unattributed", 0) > 0.3 for s in shares)
    assert all(sum(s.values()) == pytest.approx(1.0) for s in shares if sum(s.values()) > 0)


def test_stage_time_is_spread_over_the_windows_it_overlaps(sim_bundle):
    # A slow reader: each request's streaming lasts far longer than a window.
    a = analyze_full(sim_bundle(n_requests=12, rate_per_s=4, stream_delay_ns=40 * 1_000_000), window_s=0.1)
    st, tl = a.stages[a.stages["complete"]], a.timeline
    t0, w_ns = int(a.result.start_ns), int(0.1 * 1e9)
    end = st["end_ns"].to_numpy()
    begin = end - st["streaming"].to_numpy()
    assert (st["streaming"] > 3 * w_ns).all()
    for i, row in tl.iterrows():
        lo, hi = t0 + i * w_ns, t0 + (i + 1) * w_ns
        overlap = np.clip(np.minimum(end, hi) - np.maximum(begin, lo), 0, None).sum()
        # Each request's streaming time is exactly its interval, so a window holds exactly the overlap.
        assert row[STAGE_PREFIX + "streaming"] == pytest.approx(overlap, abs=1e3), i
    arrival = st["arrival_ns"].to_numpy()
    for w in a.result.windows:
        lo, hi = t0 + w.start_s * 1e9, t0 + w.end_s * 1e9
        in_flight = ((arrival < hi) & (end > lo)).any()
        assert (w.cls == "idle") == (not in_flight), w


def test_windows_without_request_time_are_idle(sim_bundle):
    # Short requests 0.5 s apart: most 50 ms windows hold no request time at all.
    m = analyze_full(sim_bundle(n_requests=6, rate_per_s=2, output_tokens=4), window_s=0.05).result
    idle = [w for w in m.windows if w.cls == "idle"]
    busy = [w for w in m.windows if w.cls != "idle"]
    assert idle and busy
    assert all(sum(w.stage_share.values()) == 0 for w in idle)
    assert all(sum(w.stage_share.values()) == pytest.approx(1.0) for w in busy)
    assert not any(w.cls == "balanced" and sum(w.stage_share.values()) == 0 for w in m.windows)


def test_unattributed_time_lowers_window_confidence(sim_bundle):
    m = analyze_full(sim_bundle(with_steps=False, **KV_STARVED), window_s=0.25).result
    for w in m.windows:
        unknown = w.class_share.get("unattributed", 0.0)
        assert w.confidence <= 1 - unknown + 1e-3 or w.cls == "idle", (w.cls, w.confidence, unknown)
        assert all(c <= 1 - unknown + 1e-3 for c in w.scores.values())
    mostly_unknown = [w for w in m.windows if w.class_share.get("unattributed", 0.0) > 0.9]
    assert mostly_unknown and all(w.confidence < 0.1 for w in mostly_unknown)
