"""The vLLM series ``collect`` keeps, one table for both ways of reading them.

Each :class:`EngineSeries` names a samples column, the exposition sample names that feed it
(newest vLLM name first, older names after) and a label filter. Several engines or models behind
one instance are summed (counts, counters) or averaged (ratios). The same table gives the PromQL
of a Prometheus range query (:func:`promql`) and the reduction of one scraped ``/metrics`` page
(:func:`row_from_exposition`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

SOURCE = "vllm"
# The inter-token-latency histogram (``vllm:inter_token_latency_seconds``; older vLLM:
# ``vllm:time_per_output_token_seconds``), kept whole by a scrape for ITL percentiles.
ITL_HISTOGRAMS = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")
ITL_BUCKETS_COLUMN = "itl_bucket_counts"


@dataclass(frozen=True)
class EngineSeries:
    column: str
    samples: tuple[str, ...]  # exposition sample names, the first present wins
    agg: str = "sum"  # "sum" or "avg" over the series of one instance
    labels: Mapping[str, str] = field(default_factory=dict)


def _s(column: str, *samples: str, agg: str = "sum", **labels: str) -> EngineSeries:
    return EngineSeries(column, samples, agg, labels)


ENGINE_SERIES: tuple[EngineSeries, ...] = (
    _s("num_requests_running", "vllm:num_requests_running"),
    _s("num_requests_waiting", "vllm:num_requests_waiting"),
    _s("kv_cache_usage_ratio", "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", agg="avg"),
    _s("num_preemptions_total", "vllm:num_preemptions_total"),
    _s("prompt_tokens_total", "vllm:prompt_tokens_total"),
    _s("generation_tokens_total", "vllm:generation_tokens_total"),
    _s("prefix_cache_queries_total", "vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
    _s("prefix_cache_hits_total", "vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
    _s("num_requests_waiting_capacity", "vllm:num_requests_waiting_by_reason", reason="capacity"),
    _s("num_requests_waiting_deferred", "vllm:num_requests_waiting_by_reason", reason="deferred"),
    _s("engine_steps_total", "vllm:iteration_tokens_total_count"),
    _s("engine_step_tokens_total", "vllm:iteration_tokens_total_sum"),
    _s("prompt_tokens_cached_total", "vllm:prompt_tokens_cached_total"),
    _s("prefill_computed_tokens_total", "vllm:request_prefill_kv_computed_tokens_sum"),
    _s("estimated_flops_total", "vllm:estimated_flops_per_gpu_total"),
    _s("estimated_read_bytes_total", "vllm:estimated_read_bytes_per_gpu_total"),
    _s("estimated_write_bytes_total", "vllm:estimated_write_bytes_per_gpu_total"),
    _s("requests_finished_total", "vllm:request_success_total"),
    _s("request_queue_seconds_total", "vllm:request_queue_time_seconds_sum"),
    _s("request_prefill_seconds_total", "vllm:request_prefill_time_seconds_sum"),
    _s("request_decode_seconds_total", "vllm:request_decode_time_seconds_sum"),
    _s("itl_seconds_total", *(f"{h}_sum" for h in ITL_HISTOGRAMS)),
    _s("itl_count_total", *(f"{h}_count" for h in ITL_HISTOGRAMS)),
)


def promql(series: EngineSeries) -> str:
    """``sum by (instance) (name{labels}) or ...`` over the series' names, newest first."""
    sel = ",".join(f'{k}="{v}"' for k, v in sorted(series.labels.items()))
    parts = [
        f"{series.agg} by (instance) ({name}{{{sel}}})" if sel else f"{series.agg} by (instance) ({name})"
        for name in series.samples
    ]
    return " or ".join(parts)


class ExpositionError(ValueError):
    """A ``/metrics`` page that is not Prometheus text exposition; the message says where."""


@dataclass
class Exposition:
    """One scraped page reduced to samples columns, plus what else collect records of it."""

    columns: dict[str, float]
    itl_bounds_s: tuple[float, ...] = ()
    itl_buckets: tuple[float, ...] = ()
    cache_config: dict[str, str] = field(default_factory=dict)
    model_names: tuple[str, ...] = ()


def row_from_exposition(text: str) -> Exposition:
    """Reduce a vLLM ``/metrics`` page to the engine columns (absent series are left out).

    Raises :class:`ExpositionError` when the page cannot be parsed.
    """
    values: dict[str, list[tuple[dict[str, str], float]]] = {}
    buckets: dict[str, dict[float, float]] = {h: {} for h in ITL_HISTOGRAMS}
    cache_config: dict[str, str] = {}
    models: set[str] = set()
    try:
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if not math.isfinite(s.value):
                    continue
                if s.labels.get("model_name"):
                    models.add(s.labels["model_name"])
                if s.name == "vllm:cache_config_info":
                    cache_config = dict(s.labels)
                    continue
                base = s.name.removesuffix("_bucket")
                if s.name.endswith("_bucket") and base in buckets:
                    le = float(s.labels.get("le", "nan"))
                    buckets[base][le] = buckets[base].get(le, 0.0) + s.value
                    continue
                values.setdefault(s.name, []).append((s.labels, s.value))
    except (ValueError, TypeError, IndexError) as exc:
        raise ExpositionError(f"not Prometheus text exposition: {exc}") from None
    columns = {}
    for spec in ENGINE_SERIES:
        for name in spec.samples:
            hits = [v for labels, v in values.get(name, ()) if _matches(labels, spec.labels)]
            if hits:
                columns[spec.column] = sum(hits) / len(hits) if spec.agg == "avg" else sum(hits)
                break
    out = Exposition(columns, cache_config=cache_config, model_names=tuple(sorted(models)))
    for h in ITL_HISTOGRAMS:
        b = buckets[h]
        if b:
            bounds = tuple(sorted(x for x in b if math.isfinite(x)))
            out.itl_bounds_s = bounds
            out.itl_buckets = (*(b[x] for x in bounds), b.get(math.inf, b[bounds[-1]] if bounds else 0.0))
            break
    return out


def _matches(labels: Mapping[str, str], want: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in want.items())
