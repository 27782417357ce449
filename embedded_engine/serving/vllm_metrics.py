"""vLLM's Prometheus metrics, with its names, types, help texts, buckets and labels.

Mirrors ``PrometheusStatLogger`` in ``vllm/v1/metrics/loggers.py`` (labels
``model_name`` and ``engine``), so vLLM's Grafana dashboards and alerts work
against ``bottleneck-map serve``. Each server gets its own registry; gauges are
read from the engine when scraped. Request histograms are observed when a
request's record is written, iteration counters once per engine step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import pairwise
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
)  # fmt: skip
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
FINISH_REASONS = ("stop", "length", "abort")
LABELS = ("model_name", "engine")


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to ``max_value`` (vLLM's token-count buckets)."""
    out, exp = [], 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exp
            if v > max_value:
                return out
            out.append(v)
        exp += 1


def _s(a: int | None, b: int | None) -> float | None:
    if a is None or b is None or b < a:
        return None
    return (b - a) / 1e9


class VllmMetrics:
    """The metric families, bound to one ``model_name`` and engine index."""

    def __init__(
        self,
        model_name: str,
        *,
        max_model_len: int,
        registry: CollectorRegistry | None = None,
        engine: str = "0",
        running: Callable[[], float] | None = None,
        waiting: Callable[[], float] | None = None,
        kv_usage: Callable[[], float] | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        values = (model_name, engine)
        reg = self.registry

        def gauge(name: str, doc: str, fn: Callable[[], float] | None) -> Gauge:
            g = Gauge(name, doc, LABELS, registry=reg, multiprocess_mode="mostrecent").labels(*values)
            if fn is not None:
                g.set_function(fn)
            return g

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, LABELS, registry=reg).labels(*values)

        def histogram(name: str, doc: str, buckets) -> Histogram:
            return Histogram(name, doc, LABELS, registry=reg, buckets=buckets).labels(*values)

        self.num_requests_running = gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", running
        )
        self.num_requests_waiting = gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting
        )
        self.kv_cache_usage_perc = gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", kv_usage
        )
        self.prefix_cache_queries = counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens."
        )
        self.prefix_cache_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        )
        self.num_preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            (*LABELS, "finished_reason"),
            registry=reg,
        )
        self.request_success = {r: success.labels(*values, r) for r in FINISH_REASONS}
        token_buckets = build_1_2_5_buckets(max_model_len)
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        )
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", token_buckets
        )
        self.iteration_tokens = histogram(
            "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", ITERATION_TOKEN_BUCKETS
        )
        self.request_params_max_tokens = histogram(
            "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", token_buckets
        )
        self.time_to_first_token = histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        )
        self.inter_token_latency = histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS
        )
        self.request_time_per_output_token = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS,
        )
        self.e2e_request_latency = histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", REQUEST_LATENCY_BUCKETS
        )
        self.request_queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.request_inference_time = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.request_prefill_time = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.request_decode_time = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )

    def observe_step(self, row: Mapping[str, Any]) -> None:
        """One engine iteration (a ``steps`` row): token counters and preemptions."""
        prompt = int(row.get("num_prefill_tokens") or 0)
        decode = int(row.get("num_decode_seqs") or 0)
        self.prompt_tokens.inc(prompt)
        if prompt + decode:
            self.iteration_tokens.observe(prompt + decode)
        self.num_preemptions.inc(int(row.get("num_preempted") or 0))

    def observe_request(self, row: Mapping[str, Any]) -> None:
        """One finished request (a ``requests`` row): latency histograms and counts.

        Rejected requests count nowhere, as in vLLM where they never reach the engine.
        """
        reason = row.get("finish_reason")
        if reason not in FINISH_REASONS:
            return
        self.request_success[reason].inc()
        prompt, output = row.get("prompt_tokens") or 0, row.get("output_tokens") or 0
        cached = row.get("cached_prompt_tokens") or 0
        self.prefix_cache_queries.inc(prompt)
        self.prefix_cache_hits.inc(cached)
        self.generation_tokens.inc(output)
        self.request_prompt_tokens.observe(prompt)
        self.request_generation_tokens.observe(output)
        if row.get("max_tokens"):
            self.request_params_max_tokens.observe(row["max_tokens"])
        arrival, first_token, finished = row.get("arrival_ns"), row.get("first_token_ns"), row.get("finished_ns")
        queued, scheduled = row.get("queued_ns"), row.get("first_scheduled_ns")
        timings = (
            (self.time_to_first_token, _s(arrival, first_token)),
            (self.e2e_request_latency, _s(arrival, finished)),
            (self.request_queue_time, _s(queued, scheduled)),
            (self.request_prefill_time, _s(scheduled, first_token)),
            (self.request_decode_time, _s(first_token, finished)),
            (self.request_inference_time, _s(scheduled, finished)),
        )
        for hist, value in timings:
            if value is not None:
                hist.observe(value)
        tokens = list(row.get("token_ns") or ())
        for a, b in pairwise(tokens):
            self.inter_token_latency.observe(max(0, b - a) / 1e9)
        if output > 1 and first_token is not None and finished is not None:
            self.request_time_per_output_token.observe((finished - first_token) / 1e9 / (output - 1))
