"""Step-less (collect-style) bundles: the engine series in the samples are the evidence for
queueing and kv_cache_capacity, per instance, with the measured numbers in the evidence."""

from __future__ import annotations

import pandas as pd
import pytest
from factories import span_request_row

from bottleneck_map.analyzer import analyze
from bottleneck_map.analyzer.engine_samples import counter_increase, engine_frame
from bottleneck_map.bundle import BundleWriter, read_bundle
from bottleneck_map.ingest.collect import collect_meta

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S  # collect bundles use the Unix clock
KV, SLOTS = "10.0.0.1:8000", "10.0.0.2:8000"


@pytest.fixture
def fleet_bundle(tmp_path):
    """Two engines behind one Prometheus, spans only (no steps): one starved of KV blocks, one of batch slots."""
    path = tmp_path / "collected"
    meta = collect_meta()
    meta["capabilities"] = {"steps": False, "samples": True, "streaming": False}
    w = BundleWriter(path, meta)
    for inst in (KV, SLOTS):
        for i in range(30):
            w.add_request(span_request_row(i, inst, T0 + i * 300 * MS, queue_ns=1500 * MS))
    for k in range(12):  # one Prometheus point per second
        ts = T0 + k * S
        # KV-starved: 3 running of the 6 seen at the start, 5 waiting, KV cache ~full, preemptions rising.
        w.add_sample(
            {
                "ts_ns": ts,
                "source": "prometheus:vllm",
                "instance": KV,
                "num_requests_running": 6.0 if k == 0 else 3.0,
                "num_requests_waiting": 0.0 if k == 0 else 5.0,
                "kv_cache_usage_ratio": 0.5 if k == 0 else 0.98,
                "num_preemptions_total": 100.0 + 2 * k,  # raw counter: 22 preemptions over the run
                "prefix_cache_queries_total": 1000.0 + 100 * k,
                "prefix_cache_hits_total": 500.0 + 25 * k,
            }
        )
        # Slot-starved: always 4 running (its cap), 6 waiting, KV cache a third used, no preemption.
        w.add_sample(
            {
                "ts_ns": ts,
                "source": "prometheus:vllm",
                "instance": SLOTS,
                "num_requests_running": 4.0,
                "num_requests_waiting": 6.0,
                "kv_cache_usage_ratio": 0.3,
                "num_preemptions_total": 7.0,
            }
        )
        w.add_sample({"ts_ns": ts, "source": "prometheus:agent", "instance": "10.0.0.1:9400", "cpu_util_ratio": 0.2})
    w.close()
    return path


def _ev(v, metric):
    return next(e for e in v.evidence if e.metric == metric)


def test_kv_starved_instance_is_kv_cache_capacity_with_its_numbers(fleet_bundle):
    m = analyze(fleet_bundle, instance=KV)
    assert m.instance == KV and m.latency_for("all").completed == 30
    assert not m.capabilities["steps"] and "prefill_compute" in {u.cls for u in m.unreachable}
    assert m.top.cls == "kv_cache_capacity" and m.top.confident
    kv = _ev(m.top, "kv_usage_p95")
    assert kv.value == pytest.approx(0.98) and "engine samples" in kv.text and "98%" in kv.text
    pre = _ev(m.top, "preemptions")
    assert pre.value == 22 and "rose by 22" in pre.text
    # Queue time while requests waited with free slots and a full cache is KV-blocked, not queueing.
    assert m.top.share_of_latency > 0.5
    assert m.verdict("queueing").share_of_latency < 0.15
    assert m.kv_usage["max"] == pytest.approx(0.98) and m.kv_usage["time_above_95"] == pytest.approx(11 / 12)


def test_slot_starved_instance_is_queueing_with_its_numbers(fleet_bundle):
    m = analyze(fleet_bundle, instance=SLOTS)
    assert m.top.cls == "queueing" and m.top.confident
    slots = _ev(m.top, "slots_full_fraction")
    assert slots.value == 1.0 and "cap (4, the most seen running)" in slots.text
    assert _ev(m.top, "mean_num_waiting").value == pytest.approx(6.0)
    assert m.verdict("kv_cache_capacity").share_of_latency == 0
    assert _ev(m.verdict("kv_cache_capacity"), "preemptions").value == 0


def test_fleet_map_and_unknown_instance(fleet_bundle):
    from bottleneck_map.analyzer.fleet import FLEET, fleet_maps

    maps = fleet_maps(fleet_bundle)
    assert set(maps) == {FLEET, KV, SLOTS}
    assert maps[FLEET].instance is None and maps[FLEET].latency_for("all").completed == 60
    assert maps[KV].top.cls == "kv_cache_capacity" and maps[SLOTS].top.cls == "queueing"
    # fleet-wide: each request's queue is split by its own instance's series
    fleet = maps[FLEET]
    assert fleet.verdict("kv_cache_capacity").share_of_latency == pytest.approx(
        maps[KV].verdict("kv_cache_capacity").share_of_latency / 2, rel=0.05
    )
    with pytest.raises(ValueError, match="not in this bundle"):
        analyze(fleet_bundle, instance="nowhere:1")


def test_counters_sum_increases_per_instance_across_resets(fleet_bundle):
    eng = engine_frame(read_bundle(fleet_bundle).table("samples"))
    assert set(eng["instance"]) == {KV, SLOTS}, "host-level samples carry no engine columns"
    assert counter_increase(eng, "num_preemptions_total") == 22
    reset = eng.copy()
    sel = reset["instance"] == KV
    vals = reset.loc[sel, "num_preemptions_total"].to_numpy().copy()
    vals[6:] = vals[6:] - 110  # the engine restarted: the counter starts again from 2
    reset.loc[sel, "num_preemptions_total"] = vals
    assert counter_increase(reset, "num_preemptions_total") == 10 + 2 + 10


def test_analyze_cli_instance_flag(fleet_bundle):
    from typer.testing import CliRunner

    from bottleneck_map.cli import app

    r = CliRunner().invoke(app, ["analyze", str(fleet_bundle), "--instance", KV])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())  # the terminal summary wraps long lines
    assert "Bottleneck: kv cache capacity" in out and f"instance {KV}" in out
    r = CliRunner().invoke(app, ["analyze", str(fleet_bundle), "--instance", "nowhere:1"])
    assert r.exit_code == 2 and "--instance" in r.output and KV in r.output


def test_windows_carry_the_engine_series_without_steps(fleet_bundle):
    from bottleneck_map.analyzer.fleet import FLEET, fleet_maps

    maps = fleet_maps(fleet_bundle, window_s=1.0)
    kv = maps[KV].windows
    assert kv[0].kv_usage == pytest.approx(0.5) and kv[0].num_waiting == 0 and kv[0].num_running == 6
    assert kv[5].kv_usage == pytest.approx(0.98) and kv[5].num_waiting == 5 and kv[5].num_running == 3
    # fleet-wide: waiting and running add up over instances, KV usage is their mean
    w = maps[FLEET].windows[5]
    assert (w.num_waiting, w.num_running) == (11, 7) and w.kv_usage == pytest.approx((0.98 + 0.3) / 2)


def test_instance_series_levels_and_counter_rates_per_instance(fleet_bundle, tmp_path):
    from bottleneck_map.analyzer.engine_samples import instance_series

    s = instance_series(read_bundle(fleet_bundle).table("samples"))
    assert set(s["instance"]) == {KV, SLOTS}  # the agent's CPU-only rows are not engine rows
    kv = s[s["instance"] == KV].reset_index(drop=True)
    assert kv["ts_ns"].is_monotonic_increasing and len(kv) == 12
    assert kv["kv_cache_usage_ratio"].tolist() == [0.5] + [0.98] * 11
    assert kv["num_requests_waiting"].iloc[1] == 5.0 and kv["num_requests_running"].iloc[0] == 6.0
    assert pd.isna(kv["num_preemptions_total_increase"].iloc[0])
    assert kv["num_preemptions_total_increase"].iloc[1:].tolist() == [2.0] * 11
    assert kv["num_preemptions_total_per_s"].iloc[1:].tolist() == pytest.approx([2.0] * 11)
    assert kv["num_preemptions_total_increase"].sum() == counter_increase(
        engine_frame(read_bundle(fleet_bundle).table("samples")), "num_preemptions_total"
    )
    assert kv["prompt_tokens_total_per_s"].isna().all()  # absent counter stays null
    # a counter reset: the new value is the increase; the rate is per second of sample spacing
    path = tmp_path / "reset"
    w = BundleWriter(path, collect_meta())
    for k, v in enumerate([100.0, 160.0, 30.0, 90.0]):
        w.add_sample(
            {"ts_ns": T0 + k * 2 * S, "source": "prometheus:vllm", "instance": KV, "generation_tokens_total": v}
        )
    w.close()
    r = instance_series(read_bundle(path).table("samples"))
    assert r["generation_tokens_total_increase"].tolist()[1:] == [60.0, 30.0, 60.0]
    assert r["generation_tokens_total_per_s"].tolist()[1:] == pytest.approx([30.0, 15.0, 30.0])
    assert instance_series(read_bundle(path).table("samples").slice(0, 0)).empty
