"""Bundles without step records: steps inferred from a server's own counters decide the classes.

Each bundle here is what ``collect --scrape`` writes for one vLLM instance: request rows from
spans (arrival, queued, first scheduled, first token, finished) and one samples row per second
with vLLM's counters. The engine's behaviour is set by construction in the counters.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from bottleneck_map.analyzer import analyze, engine_series
from bottleneck_map.analyzer.result import DevicePeaks
from bottleneck_map.bundle import BundleWriter, new_meta

S = 1_000_000_000
MS = 1_000_000
T0 = 1_763_900_000 * S
INSTANCE = "127.0.0.1:8000"
# The built-in "default" preset's shape (33.5M parameters, float32: 134 MB of weights).
MODEL = {
    "name": "default",
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "vocab_size": 8192,
    "dtype": "float32",
    "dtype_bytes": 4,
}
WEIGHT_BYTES = 134e6
PEAK_BW = 20e9
PEAK_FLOPS = 200e9
DEVICE = {
    "kind": "cpu",
    "name": "test cpu",
    "measured": {"copy_bandwidth_bytes_per_s": PEAK_BW, "matmul_flops": PEAK_FLOPS, "matmul_dtype": "float32"},
}


def _request(i: int, arrival: int, frontend: int, queue: int, prefill: int, decode: int, prompt: int, out: int):
    queued = arrival + frontend
    sched = queued + queue
    first = sched + prefill
    return {
        "request_id": f"cmpl-{i}-0",
        "instance": INSTANCE,
        "finish_reason": "length",
        "prompt_tokens": prompt,
        "output_tokens": out,
        "arrival_ns": arrival,
        "queued_ns": queued,
        "first_scheduled_ns": sched,
        "first_token_ns": first,
        "finished_ns": first + decode,
        "scheduled_ns": [sched],
    }


def _bundle(tmp_path, requests, samples, *, itl_bounds=None, device=DEVICE, model=MODEL, engine=None):
    meta = new_meta(
        "bottleneck-map collect",
        clock={"kind": "unix", "unit": "ns", "origin_unix_ns": 0, "origin_monotonic_ns": None},
        capabilities={"steps": False, "samples": True, "streaming": False},
        model=model,
        engine=engine or {"name": "vllm", "num_kv_blocks": 1000, "block_size": 32},
        device=device,
        ingest={"scrape": [{"instance": INSTANCE, "itl_bounds_s": itl_bounds or []}]},
    )
    w = BundleWriter(tmp_path / "b", meta)
    w.extend("requests", requests)
    w.extend("samples", samples)
    w.close()
    return tmp_path / "b"


def _samples(per_second: list[dict], start: int = T0) -> list[dict]:
    """Cumulative counter rows, one a second, from per-second increments (and gauges as given)."""
    rows, total = [], {}
    for i, inc in enumerate([{}, *per_second]):
        row = {"ts_ns": start + i * S, "source": "scrape:vllm", "device": None, "instance": INSTANCE}
        for k, v in inc.items():
            if k.endswith("_total"):
                total[k] = total.get(k, 0.0) + v
            else:
                row[k] = v
        row.update(
            {k: total.get(k, 0.0) for k in ("engine_steps_total", "generation_tokens_total", "prompt_tokens_total")}
        )
        row.update({k: v for k, v in total.items()})
        rows.append(row)
    return rows


def _decode_load(step_s: float, seconds: int = 6):
    """One request decoding at batch 1 for ``seconds`` with steps of ``step_s``."""
    steps = round(1 / step_s)
    per = [{"engine_steps_total": steps, "generation_tokens_total": steps, "num_requests_running": 1.0,
            "num_requests_waiting": 0.0, "kv_cache_usage_ratio": 0.01} for _ in range(seconds)]  # fmt: skip
    per[0]["prompt_tokens_total"] = 20
    req = _request(0, T0 + 1 * MS, 2 * MS, 0, 10 * MS, seconds * S - 20 * MS, 20, steps * seconds)
    return [req], _samples(per)


def test_decode_steps_near_the_bandwidth_roof_are_decode_memory_bandwidth(tmp_path):
    # 134 MB per step at 20 GB/s is 6.7 ms: steps of 10 ms run at 67% of the bandwidth roof
    reqs, samples = _decode_load(0.010)
    m = analyze(_bundle(tmp_path, reqs, samples))
    assert m.top.cls == "decode_memory_bandwidth" and m.top.confidence >= 0.5
    decode = next(p for p in m.roofline if p.phase == "decode")
    assert decode.bandwidth_utilization == pytest.approx(WEIGHT_BYTES / 0.010 / PEAK_BW, rel=0.1)
    texts = " ".join(e.text for e in m.top.evidence)
    assert "inferred from the server's series" in texts and "vllm:iteration_tokens_total" in texts


def test_decode_steps_far_below_both_roofs_are_host_overhead(tmp_path):
    # steps of 40 ms read 134 MB at 3.4 GB/s: 17% of the roof, the rest is per-step overhead
    reqs, samples = _decode_load(0.040)
    m = analyze(_bundle(tmp_path, reqs, samples))
    assert m.top.cls == "host_overhead" and m.top.confidence >= 0.5
    assert "decode_memory_bandwidth" not in [v.cls for v in m.verdicts if v.confidence >= 0.5]


def test_without_a_model_config_or_peaks_there_is_no_roofline_and_no_bandwidth_verdict(tmp_path):
    reqs, samples = _decode_load(0.010)
    m = analyze(_bundle(tmp_path, reqs, samples, model={"name": "default"}, device={}))
    assert m.roofline == [] or all(p.bandwidth_utilization is None for p in m.roofline)
    assert m.top is None or m.top.cls != "decode_memory_bandwidth" or m.top.confidence < 0.5


def test_a_long_step_spanning_seconds_without_a_counted_step_joins_the_next(tmp_path):
    # One 2,000-token prompt (about 165 GFLOP) prefilled in a step of 1.2 s, 69% of the compute
    # roof: the steps counter rises only in the second in which the step ends.
    per = [
        {"num_requests_running": 1.0, "num_requests_waiting": 0.0, "kv_cache_usage_ratio": 0.1},
        {"engine_steps_total": 1, "prompt_tokens_total": 2000, "generation_tokens_total": 1,
         "num_requests_running": 0.0, "num_requests_waiting": 0.0, "kv_cache_usage_ratio": 0.0},
    ]  # fmt: skip
    req = _request(0, T0 + 100 * MS, 2 * MS, 0, 1200 * MS, 1 * MS, 2000, 1)
    m = analyze(_bundle(tmp_path, [req], _samples(per)))
    assert m.top.cls == "prefill_compute", [(v.cls, v.share_of_latency) for v in m.verdicts]
    # the prefill is one inferred step over the whole busy stretch, not an idle engine
    assert next(v for v in m.verdicts if v.cls == "host_overhead").share_of_latency < 0.05


def test_waiting_at_one_running_with_an_empty_kv_cache_is_queueing(tmp_path):
    per, reqs = [], []
    for _s in range(6):
        per.append({"engine_steps_total": 40, "generation_tokens_total": 40, "prompt_tokens_total": 60,
                    "num_requests_running": 1.0, "num_requests_waiting": 3.0, "kv_cache_usage_ratio": 0.02})  # fmt: skip
    for i in range(4):  # each waits for the one before it, then runs for 1.4 s
        reqs.append(_request(i, T0 + 10 * MS, 2 * MS, i * 1400 * MS, 50 * MS, 1350 * MS, 60, 54))
    m = analyze(_bundle(tmp_path, reqs, _samples(per)))
    assert m.top.cls == "queueing" and m.top.confidence >= 0.5


def test_waiting_while_the_kv_cache_is_full_is_kv_cache_capacity(tmp_path):
    per = []
    for _s in range(6):
        per.append({"engine_steps_total": 40, "generation_tokens_total": 80, "prompt_tokens_total": 120,
                    "num_requests_running": 2.0, "num_requests_waiting": 3.0, "kv_cache_usage_ratio": 0.97,
                    "num_preemptions_total": 1})  # fmt: skip
    reqs = [_request(i, T0 + 10 * MS, 2 * MS, i * 1000 * MS, 50 * MS, 950 * MS, 120, 40) for i in range(5)]
    m = analyze(
        _bundle(tmp_path, reqs, _samples(per), engine={"name": "vllm", "num_kv_blocks": 12, "max_num_seqs": 16})
    )
    assert m.top.cls == "kv_cache_capacity" and m.top.confidence >= 0.5


def test_waiting_while_the_cache_holds_no_second_request_is_kv_cache_capacity(tmp_path):
    # 12 blocks of 32 tokens hold 384 tokens: about 1.5 requests of 200 + 54 tokens. One runs at 45%
    # usage (under KV_BLOCKING), the others wait for blocks with 15 batch slots free; no slot cap is
    # known (vLLM does not export max_num_seqs), so the running count alone cannot say "slots".
    per = []
    for _s in range(6):
        per.append({"engine_steps_total": 40, "generation_tokens_total": 40, "prompt_tokens_total": 200,
                    "num_requests_running": 1.0, "num_requests_waiting": 3.0, "kv_cache_usage_ratio": 0.45})  # fmt: skip
    reqs = [_request(i, T0 + 10 * MS, 2 * MS, i * 1400 * MS, 50 * MS, 1350 * MS, 200, 54) for i in range(4)]
    m = analyze(_bundle(tmp_path, reqs, _samples(per), engine={"name": "vllm", "num_kv_blocks": 12, "block_size": 32}))
    assert m.top.cls == "kv_cache_capacity" and m.top.confidence >= 0.5, [(v.cls, v.confidence) for v in m.verdicts]
    ev = {e.metric: e for e in m.top.evidence}
    assert ev["kv_capacity_reached_fraction"].value == pytest.approx(1.0)
    assert (
        "holds about 1.5 requests of the mean length (12 blocks of 32 tokens)"
        in ev["kv_capacity_reached_fraction"].text
    )


def test_a_scrape_that_misses_the_load_still_splits_the_queue_by_what_the_spans_say(tmp_path):
    # A busy server answers /metrics late: one scrape before the load and one after it, both idle.
    # The counters say 240 steps ran between them; the spans say one request ran at a time while
    # three waited, in a cache that holds 1.5 requests of the mean length.
    per = [
        {"engine_steps_total": 0, "num_requests_running": 0.0, "num_requests_waiting": 0.0, "kv_cache_usage_ratio": 0.0}
    ]
    per.append(
        {
            "engine_steps_total": 240,
            "generation_tokens_total": 216,
            "prompt_tokens_total": 800,
            "num_requests_running": 0.0,
            "num_requests_waiting": 0.0,
            "kv_cache_usage_ratio": 0.0,
        }
    )
    samples = _samples(per)
    samples[-1]["ts_ns"] = T0 + 7 * S  # the second scrape came six seconds late
    reqs = [_request(i, T0 + 1200 * MS, 2 * MS, i * 1400 * MS, 50 * MS, 1350 * MS, 200, 54) for i in range(4)]
    m = analyze(_bundle(tmp_path, reqs, samples, engine={"name": "vllm", "num_kv_blocks": 12, "block_size": 32}))
    assert m.top.cls == "kv_cache_capacity" and m.top.confidence >= 0.5, [(v.cls, v.confidence) for v in m.verdicts]
    assert m.verdict("queueing").share_of_latency == pytest.approx(0.0, abs=1e-6)


def test_inferred_steps_count_running_and_waiting_from_the_spans():
    samples = pa.Table.from_pylist(
        _samples(
            [
                {
                    "engine_steps_total": 100,
                    "generation_tokens_total": 100,
                    "num_requests_running": 0.0,
                    "num_requests_waiting": 0.0,
                }
            ]
            * 2
        )  # fmt: skip
    )
    # two requests: A runs through both seconds; B waits [0, 0.5 s) and runs [0.5 s, 2 s)
    queued = np.array([T0, T0])
    lo = np.array([T0, T0 + S // 2])
    hi = np.array([T0 + 2 * S, T0 + 2 * S])
    inf = engine_series.infer_steps(
        samples, lo, hi, np.array([INSTANCE, INSTANCE]), MODEL, DevicePeaks("cpu", "cpu", PEAK_FLOPS, PEAK_BW, "measured"),
        {}, 20.0, 100.0, queued_from=queued,
    )  # fmt: skip
    t = inf.steps.to_pydict()
    assert t["num_running"] == [pytest.approx(1.5), pytest.approx(2.0)]  # the gauges said 0
    assert t["num_waiting"] == [pytest.approx(0.5), pytest.approx(0.0)]


def test_the_front_end_hand_off_is_host_overhead_not_queue(tmp_path):
    reqs, samples = _decode_load(0.010)
    reqs = [_request(0, T0 + 1 * MS, 400 * MS, 1 * MS, 10 * MS, 5 * S, 20, 500)]
    m = analyze(_bundle(tmp_path, reqs, samples))
    stages = {s.stage: s for s in m.stages}
    assert stages["receive"].cls == "host_overhead"
    assert stages["queue"].p50_s == pytest.approx(0.001, abs=1e-4)  # vLLM's own time in queue
    assert stages["receive"].p50_s == pytest.approx(0.4, abs=1e-3)


def test_itl_comes_from_the_histogram_when_spans_carry_no_token_times(tmp_path):
    reqs, samples = _decode_load(0.010)
    bounds = [0.005, 0.01, 0.025, 0.05]
    samples[0]["itl_bucket_counts"] = [0.0, 0.0, 0.0, 0.0, 0.0]
    samples[-1]["itl_bucket_counts"] = [0.0, 500.0, 600.0, 600.0, 600.0]
    samples[0]["itl_seconds_total"], samples[-1]["itl_seconds_total"] = 0.0, 6.0
    samples[0]["itl_count_total"], samples[-1]["itl_count_total"] = 0.0, 600.0
    m = analyze(_bundle(tmp_path, reqs, samples, itl_bounds=bounds))
    itl = m.latency[0].itl
    assert itl.count == 600
    assert itl.mean == pytest.approx(0.010)
    assert itl.p50 == pytest.approx(0.005 + 0.005 * 300 / 500)  # interpolated inside (5, 10] ms
    assert any("inter_token_latency_seconds" in w for w in m.warnings)


def test_histogram_quantiles_interpolate_as_prometheus_does():
    from bottleneck_map.analyzer.latency import histogram_quantiles

    assert histogram_quantiles([1.0, 2.0], [10.0, 20.0, 20.0], [0.5, 0.75]) == [1.0, 1.5]
    assert histogram_quantiles([1.0, 2.0], [10.0, 20.0, 30.0], [0.99]) == [2.0]  # open last bucket
    assert histogram_quantiles([1.0], [0.0, 0.0], [0.5]) == [None]


def test_infer_steps_splits_counts_over_busy_pieces():
    samples = pa.Table.from_pylist(
        _samples([{"engine_steps_total": 100, "generation_tokens_total": 100, "num_requests_running": 1.0}] * 2)
    )
    # busy only in [0.25 s, 0.75 s) of the first second and all of the second
    lo = np.array([T0 + S // 4, T0 + S])
    hi = np.array([T0 + 3 * S // 4, T0 + 2 * S])
    inf = engine_series.infer_steps(
        samples, lo, hi, np.array([INSTANCE, INSTANCE]), MODEL, DevicePeaks("cpu", "cpu", PEAK_FLOPS, PEAK_BW, "measured"),
        {}, 20.0, 100.0,
    )  # fmt: skip
    t = inf.steps.to_pydict()
    assert t["start_ns"] == [T0 + S // 4, T0 + S]
    assert t["num_decode_seqs"] == [100, 100]  # each second's counts on its busy piece
    assert inf.summary["steps"] == 200
    assert inf.summary["busy_s"] == pytest.approx(1.5)
