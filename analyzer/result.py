"""The public result of an analysis: :class:`BottleneckMap` and the dataclasses it holds.

Every class has ``to_dict()`` and ``from_dict()``; ``BottleneckMap.to_dict()`` is the
versioned JSON document described field by field in ``docs/bottleneck-map.md``.
Times inside the map are seconds (floats) relative to the run start unless a
field name says ``_ns``; shares are fractions in [0, 1].
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

MAP_SCHEMA_VERSION = 3

# Stable verdict class ids (used in JSON, metrics, tests). Order is the display order.
CLASSES: tuple[str, ...] = (
    "queueing",
    "kv_cache_capacity",
    "prefill_compute",
    "decode_memory_bandwidth",
    "decode_compute",
    "pcie_transfer",
    "host_overhead",
    "tokenization",
    "streaming",
    "power_thermal",
    "balanced",
)

# The label of a window no request time overlaps (a window label only, never a run verdict).
IDLE = "idle"

# Request stages in the order latency flows through them. They add up to E2E.
STAGES: tuple[str, ...] = (
    "receive",  # arrival -> tokenize_start (request parsing, admission before tokenizing)
    "tokenize",  # tokenize_start -> tokenize_end
    "queue",  # tokenize_end -> first_scheduled (waiting for a batch slot / token budget / KV blocks)
    "prefill_compute",  # steps that carried this request's prompt
    "prefill_wait",  # first_scheduled -> first_token while other sequences' steps ran
    "requeue",  # preempted -> resumed (waiting again after preemption)
    "recompute",  # prefill steps re-run after a recompute preemption
    "swap",  # this request's share of swap time in its steps
    "decode_compute",  # decode steps that carried this request
    "decode_wait",  # first_token -> finished while not in a step (others' steps, host gaps)
    "streaming",  # finished -> last byte delivered
)

# The coarse view of the map: query -> tokenize -> queue -> prefill -> decode -> streaming -> response.
STAGE_GROUPS: dict[str, tuple[str, ...]] = {
    "tokenize": ("receive", "tokenize"),
    "queue": ("queue", "requeue"),
    "prefill": ("prefill_compute", "prefill_wait"),
    "decode": ("decode_compute", "decode_wait", "recompute", "swap"),
    "streaming": ("streaming",),
}


def _clean(v: Any) -> Any:
    """JSON-safe value: NaN/inf become None, numpy scalars become Python numbers."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        try:
            return _clean(v.item())
        except (ValueError, AttributeError):
            return v
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_dict(v) for v in obj]
    return _clean(obj)


def _from_value(tp: Any, value: Any) -> Any:
    """Rebuild a value of annotated type ``tp`` from its JSON form."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            if a is type(None):
                continue
            return _from_value(a, value)
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value)
    if origin in (list, tuple):
        inner = args[0] if args else Any
        out = [_from_value(inner, v) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        vt = args[1] if len(args) == 2 else Any
        return {k: _from_value(vt, v) for k, v in value.items()}
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in d:
            kwargs[f.name] = _from_value(hints[f.name], d[f.name])
    return cls(**kwargs)


class _Serial:
    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):  # noqa: ANN206
        return _from_dict(cls, d)


@dataclass
class Evidence(_Serial):
    """One measured fact behind a verdict: ``text`` reads as a sentence with the numbers in it."""

    metric: str  # stable metric id, e.g. "queue_share_of_e2e"
    value: float | None
    unit: str  # "ratio", "s", "bytes", "bytes/s", "count", "FLOP/s", ...
    text: str
    threshold: float | None = None  # the rule's threshold this value was compared with


@dataclass
class Verdict(_Serial):
    """One bottleneck class for the run (or a window): how much latency it explains and what to do."""

    cls: str  # one of CLASSES
    score: float  # rule strength in [0, 1]; verdicts are ranked by it
    share_of_latency: float  # fraction of summed E2E attributed to this class
    confidence: float  # in [0, 1]
    evidence: list[Evidence] = field(default_factory=list)
    recommendation: str = ""
    knobs: list[str] = field(default_factory=list)  # flags/settings named by the recommendation
    windows: list[int] = field(default_factory=list)  # indices of windows whose top verdict is this class
    requests_affected: int = 0
    sample_request_ids: list[str] = field(default_factory=list)
    rank_note: str = ""  # why this verdict ranks below the top one (empty for the top verdict)

    @property
    def confident(self) -> bool:
        from bottleneck_map.analyzer.classify import CONFIDENT

        return self.confidence >= CONFIDENT


@dataclass
class Unreachable(_Serial):
    """A verdict class this bundle cannot support, and why (for example no step records)."""

    cls: str
    reason: str


@dataclass
class StageStats(_Serial):
    """One stage of the map: its share of summed E2E, percentiles per request, and its class."""

    stage: str
    group: str
    share: float
    mean_s: float | None
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    max_s: float | None
    total_s: float
    requests_with_stage: int
    cls: str | None  # the bottleneck class behind this stage


@dataclass
class Percentiles(_Serial):
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None
    count: int = 0


@dataclass
class LatencySummary(_Serial):
    """``vllm bench serve`` metrics for one workload class (or ``all``). Seconds unless noted."""

    workload_class: str
    completed: int
    failed: int
    duration_s: float
    request_throughput: float  # completed requests / s
    input_token_throughput: float  # prompt tokens of completed requests / s
    output_token_throughput: float  # output tokens / s
    total_token_throughput: float
    ttft: Percentiles = field(default_factory=Percentiles)
    tpot: Percentiles = field(default_factory=Percentiles)
    itl: Percentiles = field(default_factory=Percentiles)
    e2e: Percentiles = field(default_factory=Percentiles)
    goodput: float | None = None  # requests meeting every SLO / s (None when no SLO given)
    slo_attainment: float | None = None  # fraction of completed requests meeting every SLO
    prefix_cache_hit_rate: float | None = None  # cached prompt tokens / prompt tokens
    preemptions: int = 0
    preempted_requests: int = 0


@dataclass
class RooflinePoint(_Serial):
    """Aggregate roofline position of one step phase (prefill, decode, mixed, all)."""

    phase: str
    steps: int
    flops: float  # total analytic FLOPs of these steps
    bytes: float  # total analytic bytes moved
    time_s: float  # summed forward time (or step time when forward is unmeasured)
    achieved_flops_per_s: float | None
    achieved_bytes_per_s: float | None
    arithmetic_intensity: float | None  # FLOP / byte
    ridge_point: float | None  # peak FLOP/s / peak bytes/s
    bound: str | None  # "memory" | "compute"
    flops_utilization: float | None  # achieved / peak
    bandwidth_utilization: float | None
    # The median step's achieved bytes/s and its fraction of peak: the typical step, unlike the
    # aggregate above, is not dragged down by a few steps stalled by CPU contention or overhead.
    step_bytes_per_s_p50: float | None = None
    step_bandwidth_utilization_p50: float | None = None
    # Fraction of this phase's step time in steps at or above roofline.ROOF_NEAR of their roofline speed.
    near_roof_fraction: float | None = None


@dataclass
class DevicePeaks(_Serial):
    name: str
    kind: str  # "cpu" | "cuda" | "unknown"
    peak_flops: float | None
    peak_bandwidth_bytes_per_s: float | None
    source: str  # "measured" | "table" | "meta" | "none"
    note: str = ""

    @property
    def ridge_point(self) -> float | None:
        if self.peak_flops and self.peak_bandwidth_bytes_per_s:
            return self.peak_flops / self.peak_bandwidth_bytes_per_s
        return None


@dataclass
class WindowVerdict(_Serial):
    """One time window of the run: what dominated it, and the numbers that say so."""

    index: int
    start_s: float
    end_s: float
    cls: str  # a class id, or IDLE when no request time overlaps the window
    score: float
    confidence: float
    requests_arrived: int
    requests_finished: int
    # stage group -> share of the stage time in this window (each stage spread over its own interval)
    stage_share: dict[str, float] = field(default_factory=dict)
    # class -> share of the attributed time placed in this window ("unattributed" when steps are missing)
    class_share: dict[str, float] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)  # class -> score in this window
    kv_usage: float | None = None
    num_waiting: float | None = None
    num_running: float | None = None
    output_tokens_per_s: float | None = None
    gpu_util: float | None = None
    sm_clock_ratio: float | None = None


@dataclass
class RequestExplanation(_Serial):
    """A slow request: its stages and the class that explains most of its latency."""

    request_id: str
    workload_class: str | None
    e2e_s: float
    ttft_s: float | None
    stages_s: dict[str, float]
    dominant_stage: str
    cls: str | None  # the class holding most of its time; None when unattributed time holds the most
    why: str


@dataclass
class CostSummary(_Serial):
    gpu_hour_cost: float | None = None
    cost_per_million_output_tokens: float | None = None
    cost_per_million_total_tokens: float | None = None
    energy_j: float | None = None
    energy_per_output_token_j: float | None = None


@dataclass
class BottleneckMap(_Serial):
    """The answer: which constraint holds latency back, when, for which requests, and what to change."""

    schema_version: int
    run_id: str | None
    bundle: str
    producer: str | None
    model: str | None
    device: DevicePeaks
    start_ns: int | None
    end_ns: int | None
    duration_s: float
    window_s: float
    instance: str | None = None  # the serving instance this map is restricted to (None: every request)
    workload: dict[str, Any] = field(default_factory=dict)  # meta.workload: what load the run was under
    slo: dict[str, float] = field(default_factory=dict)
    capabilities: dict[str, bool] = field(default_factory=dict)
    top: Verdict | None = None
    verdicts: list[Verdict] = field(default_factory=list)  # ranked, best explanation first
    unreachable: list[Unreachable] = field(default_factory=list)
    stages: list[StageStats] = field(default_factory=list)
    latency: list[LatencySummary] = field(default_factory=list)  # "all" first, then per class
    roofline: list[RooflinePoint] = field(default_factory=list)
    windows: list[WindowVerdict] = field(default_factory=list)
    worst_requests: list[RequestExplanation] = field(default_factory=list)
    kv_usage: dict[str, float | None] = field(default_factory=dict)  # mean, p95, max, time_above_95
    hardware: dict[str, float | None] = field(default_factory=dict)  # means of joined samples
    cost: CostSummary = field(default_factory=CostSummary)
    warnings: list[str] = field(default_factory=list)

    def latency_for(self, workload_class: str = "all") -> LatencySummary | None:
        return next((s for s in self.latency if s.workload_class == workload_class), None)

    def verdict(self, cls: str) -> Verdict | None:
        return next((v for v in self.verdicts if v.cls == cls), None)

    def stage(self, name: str) -> StageStats | None:
        return next((s for s in self.stages if s.stage == name), None)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> BottleneckMap:
        d = json.loads(text)
        version = d.get("schema_version")
        if version != MAP_SCHEMA_VERSION:
            raise ValueError(f"bottleneck map schema_version {version!r}; this version reads {MAP_SCHEMA_VERSION}")
        return cls.from_dict(d)
