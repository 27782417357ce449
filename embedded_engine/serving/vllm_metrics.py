"""vLLM's Prometheus metrics, with its names, types, help texts, buckets and labels.

Mirrors ``PrometheusStatLogger`` in ``vllm/v1/metrics/loggers.py`` (labels
``model_name`` and ``engine``), its ``PerfMetricsProm`` (``estimated_*``), the API
server's ``http_*`` families (prometheus-fastapi-instrumentator, as vLLM's API server
uses it) and prometheus-client's default process, platform and GC collectors, so
vLLM's Grafana dashboards and alerts work against ``bottleneck-map serve``. Each
server gets its own registry; gauges are read from the engine when scraped. Request
histograms and the per-request token counters are observed when a request's record
is written, iteration counters and the ``estimated_*`` counters once per engine step.
Families of features the engine does not have (an external KV connector, multimodal
inputs, sleep mode, admission limits) are exported at zero, as vLLM exports them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

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
REQUEST_PARAMS_N_BUCKETS = (1, 2, 5, 10, 20)
REQUEST_NUM_PREEMPTIONS_BUCKETS = (1, 2, 3, 4, 5, 10, 20)
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")  # vLLM's FinishReason, all pre-created
WAITING_REASONS = ("capacity", "deferred")
SLEEP_STATES = ("awake", "weights_offloaded", "discard_all")
PROMPT_TOKEN_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")
CACHE_HIT_SOURCES = ("device", "host", "p2p", "disk", "external_unspecified")
ADMISSION_REASONS = ("max_num_queued_reqs", "max_num_queued_tokens")
LABELS = ("model_name", "engine")
# the API server's routes that vLLM leaves out of the http_* families
HTTP_EXCLUDED_HANDLERS = ("/metrics", "/health", "/load", "/ping", "/version", "/server_info")


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


@dataclass(frozen=True)
class StepCost:
    """An analytic estimate of one engine step's work from the model's shape (per GPU: the
    engine runs on one device).

    FLOPs: 2 per weight per token through the decoder's linear layers, 2 per weight per logits
    row through the LM head (one row per scheduled sequence, as the engine computes logits for
    each sequence's last token only), and ``4 * q_size`` per (query, key) pair of attention
    (QK^T and PV). Bytes read: every weight once per step, each sequence's K/V up to its
    length after the step, the new tokens' embedding rows. Bytes written: the new tokens' K/V.
    Activations are not counted.
    """

    layer_weights: int  # linear weights of all decoder layers
    lm_head_weights: int
    hidden_size: int
    q_size: int
    num_layers: int
    kv_bytes_per_token: int  # K and V of one token in all layers
    dtype_bytes: int

    @classmethod
    def from_model(cls, cfg: Any, dtype_bytes: int) -> StepCost:
        """``cfg``: the engine's ``ModelConfig``."""
        h, n = cfg.hidden_size, cfg.num_hidden_layers
        per_layer = h * (cfg.q_size + 2 * cfg.kv_size) + cfg.q_size * h + 3 * h * cfg.intermediate_size
        return cls(
            layer_weights=n * per_layer,
            lm_head_weights=cfg.vocab_size * h,
            hidden_size=h,
            q_size=cfg.q_size,
            num_layers=n,
            kv_bytes_per_token=2 * n * cfg.kv_size * dtype_bytes,
            dtype_bytes=dtype_bytes,
        )

    def estimate(self, query_lens: Sequence[int], context_lens: Sequence[int]) -> tuple[float, float, float]:
        """(FLOPs, bytes read, bytes written) of a step whose sequences computed ``query_lens``
        tokens and hold ``context_lens`` tokens of K/V after it."""
        tokens = sum(query_lens)
        if not tokens:
            return 0.0, 0.0, 0.0
        seqs = len(query_lens)
        # query i of a chunk of q that ends at length c attends to c - q + i + 1 keys
        pairs = sum(q * (c - q) + q * (q + 1) // 2 for q, c in zip(query_lens, context_lens, strict=True))
        flops = 2 * tokens * self.layer_weights + 2 * seqs * self.lm_head_weights
        flops += 4 * self.num_layers * self.q_size * pairs
        read = (self.layer_weights + self.lm_head_weights + tokens * self.hidden_size) * self.dtype_bytes
        read += sum(context_lens) * self.kv_bytes_per_token
        return float(flops), float(read), float(tokens * self.kv_bytes_per_token)


@dataclass(frozen=True)
class EngineFacts:
    """What the engine's configuration tells the metrics (picklable, so an engine process can
    send it): the labels of ``vllm:cache_config_info`` (vLLM's ``CacheConfig`` field names, for
    the settings this engine has) and the step cost model."""

    cache_config: dict[str, str] = field(default_factory=dict)
    step_cost: StepCost | None = None


def engine_facts(engine: Any) -> EngineFacts:
    """``engine``: an ``LLMEngine`` (its resolved config, block manager and model)."""
    cfg, bm = engine.config, engine.block_manager
    swap = bm.num_swap_blocks
    cache = {
        "block_size": str(cfg.block_size),
        "cache_dtype": "auto",  # the K/V cache holds the model's own dtype, which vLLM calls "auto"
        "enable_prefix_caching": str(bool(cfg.enable_prefix_caching)),
        "num_gpu_blocks": str(cfg.num_kv_blocks),
        "num_cpu_blocks": str(swap) if swap else "None",
        "kv_cache_memory_bytes": str(cfg.num_kv_blocks * bm.bytes_per_block) if bm.bytes_per_block else "None",
        "kv_cache_size_tokens": str(cfg.num_kv_blocks * cfg.block_size),
    }
    return EngineFacts(cache, StepCost.from_model(engine.model_config, engine.dtype.itemsize))


def instrument_http(app: Any, registry: CollectorRegistry) -> None:
    """Add the API server's ``http_requests_total{handler,method,status}``,
    ``http_request_duration_seconds{handler,method}`` (and the instrumentator's other default
    families) to a Starlette ``app``, as vLLM's API server does: the same library, the same
    excluded routes, status codes grouped as ``2xx`` .. ``5xx``. Call before the app serves."""
    from prometheus_fastapi_instrumentator import Instrumentator

    Instrumentator(excluded_handlers=list(HTTP_EXCLUDED_HANDLERS), registry=registry).instrument(app)


def _s(a: int | None, b: int | None) -> float | None:
    if a is None or b is None or b < a:
        return None
    return (b - a) / 1e9


@dataclass
class _Parallel:
    """One request with ``n`` > 1, while its sequences finish."""

    n: int
    left: int = -1
    longest: int | None = None  # the most tokens a finished sequence generated

    def __post_init__(self) -> None:
        if self.left < 0:
            self.left = self.n


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
        facts: EngineFacts | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._parallel: dict[str, _Parallel] = {}  # sequence id -> its request's n > 1 group
        self._parallel_lock = threading.Lock()  # groups are added by the HTTP side, ended by the engine's
        values = (model_name, engine)
        reg = self.registry
        self.step_cost = facts.step_cost if facts is not None else None
        # prometheus-client's default collectors, which vLLM's default registry carries
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)

        def gauge(name: str, doc: str, fn: Callable[[], float] | None) -> Gauge:
            g = Gauge(name, doc, LABELS, registry=reg, multiprocess_mode="mostrecent").labels(*values)
            if fn is not None:
                g.set_function(fn)
            return g

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, LABELS, registry=reg).labels(*values)

        def histogram(name: str, doc: str, buckets) -> Histogram:
            return Histogram(name, doc, LABELS, registry=reg, buckets=buckets).labels(*values)

        def by_label(family: Gauge | Counter, label_values: Sequence[str]) -> dict[str, Any]:
            return {v: family.labels(*values, v) for v in label_values}

        self.num_requests_running = gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", running
        )
        self.num_requests_waiting = gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting
        )
        waiting_by_reason = by_label(
            Gauge(
                "vllm:num_requests_waiting_by_reason",
                "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling "
                "capacity; 'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked "
                "status). Sum of all reasons equals vllm:num_requests_waiting.",
                (*LABELS, "reason"),
                registry=reg,
                multiprocess_mode="mostrecent",
            ),
            WAITING_REASONS,
        )
        if waiting is not None:  # every waiting request waits for capacity: nothing here defers one
            waiting_by_reason["capacity"].set_function(waiting)
        self.num_requests_waiting_by_reason = waiting_by_reason
        sleep = by_label(
            Gauge(
                "vllm:engine_sleep_state",
                "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
                "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
                (*LABELS, "sleep_state"),
                registry=reg,
                multiprocess_mode="mostrecent",
            ),
            SLEEP_STATES,
        )
        sleep["awake"].set(1)  # the engine has no sleep mode
        self.kv_cache_usage_perc = gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", kv_usage
        )
        if facts is not None and facts.cache_config:
            info = {**facts.cache_config, "engine": engine}
            Gauge(
                "vllm:cache_config_info",
                "Information of the LLMEngine CacheConfig",
                tuple(info),
                registry=reg,
                multiprocess_mode="mostrecent",
            ).labels(**info).set(1)
        self.prefix_cache_queries = counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens."
        )
        self.prefix_cache_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        )
        counter(
            "vllm:external_prefix_cache_queries",
            "External prefix cache queries from KV connector cross-instance cache sharing, in terms of number "
            "of queried tokens.",
        )
        counter(
            "vllm:external_prefix_cache_hits",
            "External prefix cache hits from KV connector cross-instance cache sharing, in terms of number of "
            "cached tokens.",
        )
        counter("vllm:mm_cache_queries", "Multi-modal cache queries, in terms of number of queried items.")
        counter("vllm:mm_cache_hits", "Multi-modal cache hits, in terms of number of cached items.")
        self.num_preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.prompt_tokens_by_source = by_label(
            Counter(
                "vllm:prompt_tokens_by_source",
                "Number of prompt tokens by source.",
                (*LABELS, "source"),
                registry=reg,
            ),
            PROMPT_TOKEN_SOURCES,
        )
        self.prompt_tokens_cached = counter(
            "vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external)."
        )
        self.prompt_tokens_cached_by_source = by_label(
            Counter(
                "vllm:prompt_tokens_cached_by_source",
                "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), host "
                "(offloaded to DRAM), disk, p2p (transferred from another vLLM instance) or external_unspecified. "
                "Counted at admission; sums to vllm:prefix_cache_hits + vllm:external_prefix_cache_hits.",
                (*LABELS, "source"),
                registry=reg,
            ),
            CACHE_HIT_SOURCES,
        )
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            (*LABELS, "finished_reason"),
            registry=reg,
        )
        self.request_success = {r: success.labels(*values, r) for r in FINISH_REASONS}
        rejections = Counter(
            "vllm:admission_rejections",
            "Number of admission attempts rejected by a queue limit, by reason.",
            ("model_name", "reason"),
            registry=reg,
        )
        self.admission_rejections = {r: rejections.labels(model_name, r) for r in ADMISSION_REASONS}
        self.estimated_flops = counter(
            "vllm:estimated_flops_per_gpu_total",
            "Estimated number of floating point operations per GPU (for Model Flops Utilization calculations).",
        )
        self.estimated_read_bytes = counter(
            "vllm:estimated_read_bytes_per_gpu_total",
            "Estimated number of bytes read from memory per GPU (for Model Flops Utilization calculations).",
        )
        self.estimated_write_bytes = counter(
            "vllm:estimated_write_bytes_per_gpu_total",
            "Estimated number of bytes written to memory per GPU (for Model Flops Utilization calculations).",
        )
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
        self.request_max_num_generation_tokens = histogram(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            token_buckets,
        )
        self.request_params_n = histogram(
            "vllm:request_params_n", "Histogram of the n request parameter.", REQUEST_PARAMS_N_BUCKETS
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
        self.request_num_preemptions = histogram(
            "vllm:request_num_preemptions",
            "Histogram of the number of times a request was preempted.",
            REQUEST_NUM_PREEMPTIONS_BUCKETS,
        )
        self.request_prefill_kv_computed_tokens = histogram(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
            token_buckets,
        )

    def record_admission_rejection(self, reason: str) -> None:
        """One request refused by a queue limit (``reason``: one of :data:`ADMISSION_REASONS`)."""
        self.admission_rejections[reason].inc()

    def observe_step(self, row: Mapping[str, Any]) -> None:
        """One engine iteration (a ``steps`` row): token counters and preemptions."""
        prompt = int(row.get("num_prefill_tokens") or 0)
        decode = int(row.get("num_decode_seqs") or 0)
        self.prompt_tokens.inc(prompt)
        if prompt + decode:
            self.iteration_tokens.observe(prompt + decode)
        self.num_preemptions.inc(int(row.get("num_preempted") or 0))
        if self.step_cost is not None and row.get("query_lens"):
            flops, read, written = self.step_cost.estimate(row["query_lens"], row["context_lens"])
            self.estimated_flops.inc(flops)
            self.estimated_read_bytes.inc(read)
            self.estimated_write_bytes.inc(written)

    def expect_parallel(self, sequence_ids: Sequence[str]) -> None:
        """The sequences of one request with ``n`` = ``len(sequence_ids)``: as vLLM's parent request,
        ``request_params_n`` and ``request_max_num_generation_tokens`` observe it once, when its last
        sequence ends (each sequence counts in the other series as a request of its own)."""
        group = _Parallel(len(sequence_ids))
        with self._parallel_lock:
            for sid in sequence_ids:
                self._parallel[sid] = group

    def forget_parallel(self, sequence_ids: Sequence[str]) -> None:
        """Sequences that were never submitted (the client left first): their group ends without them."""
        for sid in sequence_ids:
            self._end_parallel(sid, None)

    def _end_parallel(self, sequence_id: str, output_tokens: int | None) -> bool:
        """Count one sequence of a group (None: not a success); whether ``sequence_id`` had one."""
        with self._parallel_lock:
            group = self._parallel.pop(sequence_id, None)
            if group is None:
                return False
            group.left -= 1
            if output_tokens is not None:
                group.longest = max(group.longest or 0, output_tokens)
            done = group.left == 0 and group.longest is not None
        if done:
            self.request_params_n.observe(group.n)
            self.request_max_num_generation_tokens.observe(group.longest)
        return True

    def observe_request(self, row: Mapping[str, Any]) -> None:
        """One finished request (a ``requests`` row): latency histograms and counts.

        Rejected requests count nowhere, as in vLLM where they never reach the engine.
        """
        reason = row.get("finish_reason")
        ok = reason in FINISH_REASONS
        in_group = self._end_parallel(str(row.get("request_id")), (row.get("output_tokens") or 0) if ok else None)
        if not ok:
            return
        self.request_success[reason].inc()
        prompt, output = row.get("prompt_tokens") or 0, row.get("output_tokens") or 0
        cached = max(0, row.get("cached_prompt_tokens") or 0)
        self.prefix_cache_queries.inc(prompt)
        self.prefix_cache_hits.inc(cached)
        self.prompt_tokens_by_source["local_compute"].inc(prompt - cached)
        self.prompt_tokens_by_source["local_cache_hit"].inc(cached)
        self.prompt_tokens_cached.inc(cached)
        self.prompt_tokens_cached_by_source["device"].inc(cached)
        self.generation_tokens.inc(output)
        self.request_prompt_tokens.observe(prompt)
        self.request_generation_tokens.observe(output)
        if not in_group:
            self.request_max_num_generation_tokens.observe(output)  # n = 1: the longest of one sequence
            self.request_params_n.observe(1)
        self.request_num_preemptions.observe(len(row.get("preempted_ns") or ()))
        self.request_prefill_kv_computed_tokens.observe(prompt - cached)
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
        # as vLLM: the decode time over the tokens after the first, and 0 for a request of one token or none
        decode = _s(first_token, finished)
        self.request_time_per_output_token.observe(decode / (output - 1) if output > 1 and decode is not None else 0.0)
