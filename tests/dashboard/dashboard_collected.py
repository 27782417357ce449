"""A collect-style bundle (spans + Prometheus, no steps) of a two-instance fleet, for the timeline's
engine panels drawn from the samples (built as in tests/analyzer/test_engine_samples.py)."""

from __future__ import annotations

from pathlib import Path

from factories import span_request_row

from bottleneck_map.bundle import BundleWriter
from bottleneck_map.ingest.collect import collect_meta

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S  # collect bundles use the Unix clock
KV, SLOTS = "10.0.0.1:8000", "10.0.0.2:8000"
SECONDS = 30


def make_collected_bundle(path: Path) -> Path:
    """Two engines behind one Prometheus scraped every second: ``KV`` with its KV cache near full and
    preemptions rising (the counter resets once, at 20 s), ``SLOTS`` at its batch cap with requests waiting."""
    meta = collect_meta()
    meta["capabilities"] = {"steps": False, "samples": True, "streaming": False}
    w = BundleWriter(path, meta)
    for inst in (KV, SLOTS):
        for i in range(60):
            w.add_request(span_request_row(i, inst, T0 + i * 450 * MS, queue_ns=900 * MS))
    for k in range(SECONDS):
        ts = T0 + k * S
        w.add_sample(
            {
                "ts_ns": ts,
                "source": "prometheus:vllm",
                "instance": KV,
                "num_requests_running": 3.0,
                "num_requests_waiting": 5.0,
                "kv_cache_usage_ratio": 0.5 if k == 0 else 0.98,
                "num_preemptions_total": (100.0 + 2 * k) if k < 20 else float(k - 20),  # restarted at 20 s
                "prompt_tokens_total": 1000.0 + 200 * k,
                "generation_tokens_total": 5000.0 + 60 * k,
            }
        )
        w.add_sample(
            {
                "ts_ns": ts + 300 * MS,  # scraped at its own instants
                "source": "prometheus:vllm",
                "instance": SLOTS,
                "num_requests_running": 4.0,
                "num_requests_waiting": 6.0,
                "kv_cache_usage_ratio": 0.3,
                "num_preemptions_total": 7.0,
                "prompt_tokens_total": 400.0 * k,
                "generation_tokens_total": 90.0 * k,
            }
        )
        w.add_sample({"ts_ns": ts, "source": "prometheus:agent", "instance": "10.0.0.1:9400", "cpu_util_ratio": 0.2})
    w.close()
    return path
