"""TTFT, TPOT, ITL, E2E and goodput exactly as ``vllm bench serve`` computes them."""

from __future__ import annotations

import numpy as np
import pytest

from bottleneck_map.analyzer import analyze
from bottleneck_map.analyzer.data import load
from bottleneck_map.analyzer.latency import inter_token_latencies, latency_summaries, parse_slo, request_metrics
from bottleneck_map.bundle import BundleWriter, new_meta

T = 1_000_000_000_000
MS = 1_000_000


def _bundle(path, rows):
    w = BundleWriter(path, new_meta("test"))
    for r in rows:
        w.add_request(r)
    w.close()
    return load(path)


def _req(rid, arrival, first, last, n_out, cls="chat", delivered=None, **kw):
    row = {
        "request_id": rid,
        "workload_class": cls,
        "arrival_ns": T + arrival * MS,
        "first_token_ns": T + first * MS,
        "finished_ns": T + last * MS,
        "first_byte_ns": T + first * MS,
        "last_byte_ns": T + last * MS,
        "output_tokens": n_out,
        "prompt_tokens": 10,
        "delivered_ns": [T + d * MS for d in (delivered or [first, last])],
    }
    row.update(kw)
    return row


def test_per_request_metrics_follow_vllm_definitions(tmp_path):
    t = _bundle(tmp_path / "b", [_req("a", 0, 100, 1000, 10, delivered=[100, 400, 1000]), _req("b", 50, 250, 250, 1)])
    m = request_metrics(t.requests).set_index("request_id")
    assert m.loc["a", "ttft_s"] == pytest.approx(0.1)
    assert m.loc["a", "e2e_s"] == pytest.approx(1.0)
    assert m.loc["a", "tpot_s"] == pytest.approx((1.0 - 0.1) / 9)
    assert np.isnan(m.loc["b", "tpot_s"])  # a single output token has no TPOT
    itl = inter_token_latencies(t.requests)
    assert sorted(itl["itl_s"].round(6)) == [0.0, 0.3, 0.6]  # pooled gaps: a: 0.3, 0.6; b: 0.0


def test_summary_percentiles_throughput_goodput(tmp_path):
    rows = [
        _req(f"r{i}", i * 100, i * 100 + 50 + 10 * i, i * 100 + 500, 11, cls=("chat", "rag")[i % 2]) for i in range(10)
    ]
    rows.append(_req("bad", 0, 10, 20, 2, error="boom", finish_reason="error"))
    t = _bundle(tmp_path / "b", rows)
    metrics, itl = request_metrics(t.requests), inter_token_latencies(t.requests)
    allc, *per = latency_summaries(metrics, itl, {"ttft": 0.1})
    ttfts = np.array([(50 + 10 * i) / 1e3 for i in range(10)])
    assert allc.completed == 10 and allc.failed == 1
    assert allc.ttft.p50 == pytest.approx(np.percentile(ttfts, 50))
    assert allc.ttft.p99 == pytest.approx(np.percentile(ttfts, 99))
    duration = (900 + 500) / 1e3  # first arrival 0 -> last completion 1400 ms
    assert allc.duration_s == pytest.approx(duration)
    assert allc.request_throughput == pytest.approx(10 / duration)
    assert allc.output_token_throughput == pytest.approx(110 / duration)
    assert allc.goodput == pytest.approx(int((ttfts <= 0.1).sum()) / duration)
    assert [s.workload_class for s in per] == ["chat", "rag"]
    assert sum(s.completed for s in per) == 10
    assert sum(s.itl.count for s in per) == allc.itl.count == len(itl)


def test_parse_slo():
    assert parse_slo("ttft=0.5,tpot=0.05,e2e=10") == {"ttft": 0.5, "tpot": 0.05, "e2e": 10.0}
    assert parse_slo(None) == {}
    for bad in ("ttft", "foo=1", "ttft=x", "e2e=-1"):
        with pytest.raises(ValueError):
            parse_slo(bad)


def test_map_latency_matches_metrics(sim_bundle):
    p = sim_bundle(output_tokens=8)
    m = analyze(p, slo={"ttft": 10.0})
    allc = m.latency_for("all")
    met = request_metrics(load(p).requests)
    assert allc.e2e.p95 == pytest.approx(np.percentile(met["e2e_s"], 95))
    assert allc.slo_attainment == 1.0
    assert {s.workload_class for s in m.latency} == {"all", "chat", "rag"}
