"""Partial and unusual bundles: in-flight requests, steps naming unknown requests, no streaming."""

from __future__ import annotations

import numpy as np

from bottleneck_map.analyzer import analyze, request_stages, summarize_bundle, summary_text
from bottleneck_map.analyzer.result import STAGES
from bottleneck_map.bundle import BundleWriter, new_meta

T = 1_000_000_000_000
MS = 1_000_000


def test_in_flight_requests_and_unknown_step_ids(tmp_path):
    w = BundleWriter(tmp_path / "b", new_meta("test", engine={"max_num_seqs": 4, "num_kv_blocks": 100}))
    w.add_request(
        {
            "request_id": "done",
            "arrival_ns": T,
            "first_scheduled_ns": T + MS,
            "first_token_ns": T + 5 * MS,
            "finished_ns": T + 20 * MS,
            "output_tokens": 4,
        }
    )
    w.add_request({"request_id": "inflight", "arrival_ns": T + 2 * MS, "first_scheduled_ns": T + 6 * MS})
    w.add_step(
        {
            "step_id": 0,
            "start_ns": T + MS,
            "end_ns": T + 5 * MS,
            "request_ids": ["done", "ghost"],
            "query_lens": [8, 8],
            "context_lens": [8, 8],
            "is_prefill": [True, True],
            "kv_blocks_used": 10,
            "kv_blocks_free": 90,
        }
    )
    w.add_step(
        {
            "step_id": 1,
            "start_ns": T + 6 * MS,
            "end_ns": T + 20 * MS,
            "request_ids": ["done", "inflight"],
            "query_lens": [1, 8],
            "context_lens": [9, 8],
            "is_prefill": [False, True],
        }
    )
    w.close(end_meta=False)
    st = request_stages(tmp_path / "b").set_index("request_id")
    assert bool(st.loc["done", "complete"]) and not bool(st.loc["inflight", "complete"])
    assert st.loc["done", list(STAGES)].sum() == st.loc["done", "e2e_ns"]
    m = analyze(tmp_path / "b")
    assert m.latency_for("all").completed == 1
    assert m.capabilities["streaming"] is False
    assert "streaming" in {u.cls for u in m.unreachable}
    assert np.isfinite(m.duration_s)


def test_summary_of_a_bundle_path(sim_bundle):
    b = sim_bundle(max_num_seqs=2, rate_per_s=60, n_requests=30)
    text = summary_text(b)
    assert "Bottleneck: queueing" in text and "Latency map" in text
    assert summarize_bundle(b) is not None


def test_no_finished_request_gives_no_verdict(tmp_path):
    w = BundleWriter(tmp_path / "b", new_meta("test"))
    w.add_request({"request_id": "a", "arrival_ns": T, "first_scheduled_ns": T + MS})
    w.close(end_meta=False)
    m = analyze(tmp_path / "b")
    assert m.top is None and m.verdicts == []
    assert any("no request finished" in x for x in m.warnings)
    assert "no verdict" in summary_text(m)
