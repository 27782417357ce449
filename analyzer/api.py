"""The facade: ``analyze(bundle) -> BottleneckMap``, composed from one analysis per module."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bottleneck_map.analyzer import (
    attribution,
    classify,
    engine_samples,
    engine_series,
    hardware,
    latency,
    roofline,
    stages,
    steprows,
    windows,
)
from bottleneck_map.analyzer.data import NA_NS, Tables, f64, for_instance, load, ns, release, to_np, workload_classes
from bottleneck_map.analyzer.devices import device_peaks
from bottleneck_map.analyzer.result import (
    CLASSES,
    MAP_SCHEMA_VERSION,
    STAGE_GROUPS,
    STAGES,
    BottleneckMap,
    CostSummary,
    DevicePeaks,
    LatencySummary,
    Percentiles,
    RequestExplanation,
    StageStats,
    Unreachable,
)
from bottleneck_map.bundle import Bundle, BundleError

WORST_REQUESTS = 5
# Up to this many (step, sequence) rows the own-step class make-up is computed exactly.
EXACT_OWN_ROWS = 2_000_000
# Requests whose token lists are read and reduced at a time (about 500k token stamps, 4 MB).
CHUNK_REQUESTS = 16_384
MAX_WINDOWS = 100_000


@dataclass
class Analysis:
    """Intermediate tables of one analysis, kept for drill-down (dashboard, tests).

    ``tables`` reads the bundle's whole tables on first use; ``itl`` (every pooled inter-token
    gap, :func:`~bottleneck_map.analyzer.latency.inter_token_latencies`) is built on first use.
    """

    tables: Tables
    stages: pd.DataFrame
    metrics: pd.DataFrame
    roofline: pd.DataFrame
    steps: pd.DataFrame
    attributed: pd.DataFrame
    timeline: pd.DataFrame
    samples: pd.DataFrame
    result: BottleneckMap

    @cached_property
    def itl(self) -> pd.DataFrame:
        return latency.inter_token_latencies(self.tables.requests)


def analyze(
    bundle_or_path: Bundle | Tables | str | os.PathLike[str],
    *,
    window_s: float = 1.0,
    slo: Mapping[str, float] | None = None,
    gpu_hour_cost: float | None = None,
    instance: str | None = None,
    chunk_rows: int | None = None,
) -> BottleneckMap:
    """Analyse a bundle (path or opened :class:`~bottleneck_map.bundle.Bundle`) into its bottleneck map.

    ``instance`` (a value of the tables' ``instance`` column, e.g. ``"host:8000"``) restricts
    every table to that serving instance: its requests and steps, its engine samples and the
    host-level samples of its host (:func:`~bottleneck_map.analyzer.data.for_instance`).
    ``chunk_rows`` sets how many steps (and requests) the per-sequence and per-token lists are
    read and reduced at a time (default :data:`~bottleneck_map.analyzer.steprows.CHUNK_STEPS`
    steps, :data:`CHUNK_REQUESTS` requests); the result does not depend on it.

    Raises :class:`~bottleneck_map.bundle.BundleError` for a bundle that cannot be
    analysed (unreadable, or no requests) and ValueError for bad arguments (an unknown instance).
    """
    return _analysis(bundle_or_path, window_s, slo, gpu_hour_cost, instance, chunk_rows, keep_frames=False).result


def _lookup(requests: pa.Table, life: pd.DataFrame) -> steprows.RequestLookup:
    """Request rows by id for the step chunks; a request spans arrival -> last byte (unbounded when unfinished)."""
    hi = np.where(life["complete"].to_numpy(), life["t6"].to_numpy(), np.iinfo(np.int64).max)
    return steprows.RequestLookup(stages._ids(requests), life["t0"].to_numpy(), hi)


def _counters_complete(steps: pa.Table) -> bool:
    cols = ("num_prefill_tokens", "num_prefill_seqs", "num_decode_seqs")
    return steps.num_rows > 0 and all(steps.column(c).null_count == 0 for c in cols)


def _token_pass(t: Tables, codes: np.ndarray, n_classes: int, rows: int) -> tuple[latency.GapPool, float | None]:
    """One pass over the requests' token lists, ``rows`` requests at a time: the pooled ITL gaps
    (from ``delivered_ns``, else ``token_ns`` when no request has deliveries) and the mean token ->
    byte delay (None unless every request's ``delivered_ns`` pairs with its ``token_ns``)."""
    delivered = latency.GapCollector(n_classes)
    tokens: latency.GapCollector | None = latency.GapCollector(n_classes)  # until a delivery is seen
    total = count = n_tokens = 0
    paired = True
    off = 0
    for c in t.chunks("requests", ["token_ns", "delivered_ns"], rows):
        tok, dl = c.column("token_ns"), c.column("delivered_ns")
        cc = codes[off : off + c.num_rows]
        off += c.num_rows
        if tokens is not None and dl.null_count < len(dl):
            tokens = None  # earlier chunks had no deliveries: they add no delivered gaps
        if tokens is not None:
            tokens.add(tok, cc)
        else:
            delivered.add(dl, cc)
        tl = to_np(pc.list_value_length(tok), 0, np.int64)
        n_tokens += int(tl.sum())
        if paired and np.array_equal(tl, to_np(pc.list_value_length(dl), 0, np.int64)):
            a, b = pc.list_flatten(tok), pc.list_flatten(dl)
            if a.null_count or b.null_count:
                ok = np.asarray(pc.and_(pc.is_valid(a), pc.is_valid(b)).to_numpy(zero_copy_only=False), bool)
                d = to_np(b, 0, np.int64)[ok] - to_np(a, 0, np.int64)[ok]
            else:
                d = to_np(b, 0, np.int64) - to_np(a, 0, np.int64)
            total += int(d.sum())
            count += len(d)
        else:
            paired = False
    if tokens is not None:
        return tokens.pool(), None
    paired = paired and n_tokens > 0 and count > 0
    return delivered.pool(), (total / count / 1e9 if paired else None)


def analyze_full(
    bundle_or_path: Bundle | Tables | str | os.PathLike[str],
    *,
    window_s: float = 1.0,
    slo: Mapping[str, float] | None = None,
    gpu_hour_cost: float | None = None,
    instance: str | None = None,
    chunk_rows: int | None = None,
) -> Analysis:
    """Like :func:`analyze`, also returning the per-request, per-step and per-window tables."""
    return _analysis(bundle_or_path, window_s, slo, gpu_hour_cost, instance, chunk_rows, keep_frames=True)


def _analysis(
    bundle_or_path: Bundle | Tables | str | os.PathLike[str],
    window_s: float,
    slo: Mapping[str, float] | None,
    gpu_hour_cost: float | None,
    instance: str | None,
    chunk_rows: int | None,
    *,
    keep_frames: bool,
) -> Analysis:
    """The analysis, as a pipeline of named steps (each drops what the next ones no longer need).

    Without ``keep_frames`` only ``result`` (and ``tables``) is filled in, and the per-request and
    per-step frames are dropped as soon as what the map needs of them is taken.
    """
    _check_arguments(window_s, gpu_hour_cost, chunk_rows)
    run = _open(bundle_or_path, instance, chunk_rows, keep_frames)
    itl, token_to_byte = _token_gaps(run)  # pass 1: the requests' token lists
    req = _per_request(run, itl, dict(slo or {}))  # pass 2: the steps' lists, stages, latency
    stp = _per_step(run, req)  # roofline, step breakdown, own-step make-up
    attr, eng = _attributed(run, req, stp)  # every request's time by class
    win = _windows(run, req, stp, attr, eng, window_s)  # time bounds, windows and their verdicts
    judged = _verdicts(run, req, stp, attr, eng, win, token_to_byte)  # signals and rules
    result = _bottleneck_map(run, req, stp, attr, eng, win, judged, window_s, slo, gpu_hour_cost, instance)
    if not keep_frames:
        return Analysis(run.t, None, None, None, None, None, None, None, result)
    sb = stp.sb if stp.sb is not None else pd.DataFrame()
    return Analysis(run.t, req.st, req.metrics, stp.roof, sb, attr, win.timeline, stp.samples, result)


def _check_arguments(window_s: float, gpu_hour_cost: float | None, chunk_rows: int | None) -> None:
    if not window_s or window_s <= 0 or not np.isfinite(window_s):
        raise ValueError(f"window_s must be a positive number of seconds, got {window_s!r}")
    if gpu_hour_cost is not None and (gpu_hour_cost < 0 or not np.isfinite(gpu_hour_cost)):
        raise ValueError(f"gpu_hour_cost must be a non-negative number, got {gpu_hour_cost!r}")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive number of rows, got {chunk_rows!r}")


@dataclass
class _Run:
    """The bundle being analysed and what every step reads of it."""

    t: Tables
    requests: pa.Table | None  # dropped once the per-request tables are built (bundles with steps)
    steps: pa.Table
    caps: dict[str, bool]  # taken once: Tables.capabilities reads the tables again
    has_steps: bool
    engine: dict[str, Any]
    peaks: DevicePeaks
    warnings: list[str]
    chunk_rows: int | None
    keep_frames: bool

    @property
    def meta(self) -> dict[str, Any]:
        return self.t.meta


def _open(bundle_or_path, instance: str | None, chunk_rows: int | None, keep_frames: bool) -> _Run:
    t = load(bundle_or_path)
    if instance is not None:
        t = for_instance(t, instance)
    requests, steps = t.lean("requests"), t.lean("steps")
    if requests.num_rows == 0:
        raise BundleError(f"{t.path}: bundle has no requests; nothing to analyse")
    meta, caps = t.meta, t.capabilities
    return _Run(
        t,
        requests,
        steps,
        caps,
        caps["steps"],
        dict(meta.get("engine") or {}),
        device_peaks(meta.get("device")),
        t.warnings,
        chunk_rows,
        keep_frames,
    )


def _token_gaps(run: _Run) -> tuple[latency.GapPool, float | None]:
    """One pass over the requests' token lists first, while little else is held: the pooled ITL
    gaps are the largest thing it builds, and only their percentiles are kept."""
    codes, classes = latency.class_codes(workload_classes(run.requests))
    itl, token_to_byte = _token_pass(run.t, codes, len(classes), run.chunk_rows or CHUNK_REQUESTS)
    itl = itl.taken()
    del codes
    release()
    return itl, token_to_byte


@dataclass
class _Requests:
    """Per-request tables and what the later steps need of the requests table."""

    st: pd.DataFrame
    metrics: pd.DataFrame | None  # kept only for drill-down
    lat: list
    ttft: np.ndarray
    spans: tuple
    facts: dict[str, Any]
    step_sums: Any  # per-step sums of the steps' lists (bundles with steps)
    lookup: Any  # requests by id for the exact own-step pass, None when it is not exact
    inferred: engine_series.InferredSteps | None  # steps inferred from a server's counters
    done: np.ndarray


def _per_request(run: _Run, itl, slo: dict[str, float]) -> _Requests:
    """One pass over the steps' per-sequence lists, a chunk of steps at a time (per-step sums for
    the roofline, per-request own step time for the stages), then the per-request tables."""
    t, requests = run.t, run.requests
    step_chunk = run.chunk_rows or steprows.CHUNK_STEPS
    life = stages.lifecycle(requests)
    lookup = _lookup(requests, life) if run.has_steps else None
    step_sums = req_sums = None
    if run.has_steps:
        step_sums, req_sums = steprows.reduce_steps(
            t, run.steps, lookup, life["t4"].to_numpy(), list_sums=not _counters_complete(run.steps),
            chunk_rows=step_chunk,
        )  # fmt: skip
        release()
    # Exact own-step make-up when the exploded steps are small (a second pass over them, after
    # the step breakdown); the interval make-up otherwise.
    if not (run.has_steps and int(step_sums.seqs.sum()) <= EXACT_OWN_ROWS):
        lookup = None
    st = stages.request_stages(requests, sums=req_sums, life=life)
    del life, req_sums
    metrics = latency.request_metrics(requests, labels=st)
    lat = latency.latency_summaries(metrics, itl, slo)
    if not run.has_steps and lat[0].itl.count == 0 and run.caps["samples"]:
        _itl_from_histogram(lat[0], t, run.warnings)
    ttft = metrics["ttft_s"].to_numpy()
    kept = metrics if run.keep_frames else None
    del metrics
    # What the rest needs of the requests table, taken now: without steps the engine samples
    # need the instances later; with them the table is dropped (``Analysis.tables`` re-reads it).
    spans = stages.preempted_spans(requests, pd.DataFrame(windows.bounds(st)))
    facts = _request_facts(requests)
    facts["kv_request_capacity"] = attribution.kv_request_capacity(
        run.engine, facts["mean_prompt_tokens"], facts["mean_output_tokens"]
    )
    inferred = _inferred_steps(run, st, facts) if not run.has_steps and run.caps["samples"] else None
    del requests  # no reference may outlive the forget, or release() cannot hand its pages back
    if run.has_steps:
        run.requests = None
        t.forget("requests")
    release()
    done = st["complete"].to_numpy()
    if not done.any():
        run.warnings.append("no request finished; stage shares are empty")
    return _Requests(st, kept, lat, ttft, spans, facts, step_sums, lookup, inferred, done)


def _inferred_steps(run: _Run, st: pd.DataFrame, facts: dict[str, Any]) -> engine_series.InferredSteps | None:
    """Without step records, the engine's own counters (a scrape of vLLM's /metrics, or Prometheus)
    stand in for them: inferred steps, one per busy stretch between two samples."""
    b = windows.bounds(st)
    return engine_series.infer_steps(
        run.t.samples,
        b["t3"],
        b["t5"],
        run.requests.column("instance").to_pandas().to_numpy(),
        run.meta.get("model"),
        run.peaks,
        run.engine,
        facts["mean_prompt_tokens"],
        facts["mean_output_tokens"],
        queued_from=b["t2"],
    )


@dataclass
class _Steps:
    """What the map needs of the steps (measured or inferred)."""

    steps: pa.Table | None  # the columns the signals read
    samples: pd.DataFrame
    roof: pd.DataFrame | None  # the per-step roofline, kept only for drill-down
    sb: pd.DataFrame | None  # step breakdown: class time per step
    own: pd.DataFrame | None  # exact own-step make-up per request
    points: list
    model_time_s: float | None
    roof_end: int | None
    busy: np.ndarray  # samples taken while a step ran


def _per_step(run: _Run, req: _Requests) -> _Steps:
    """Per-step tables, once the requests table is dropped: roofline, clock-throttling loss, the
    step breakdown, the exact own-step make-up, and which samples fell inside steps."""
    t, caps, has_steps, peaks = run.t, run.caps, run.has_steps, run.peaks
    steps = run.steps
    samples = hardware.sample_frame(t.samples) if caps["samples"] else hardware.sample_frame(t.samples.slice(0, 0))
    roof = roofline.step_roofline(steps, run.meta.get("model"), peaks, sums=req.step_sums) if has_steps else None
    sb = None
    kv_cap = req.facts["kv_request_capacity"]
    if has_steps:
        sb = attribution.step_breakdown(
            steps,
            run.engine,
            _throttle_loss(samples, roof),
            roof["prefill_time_frac"].to_numpy() if "prefill_time_frac" in roof else None,
            roof["model_time_s"].to_numpy() * 1e9 if "model_time_s" in roof else None,
            roof["decode_compute_bound"].to_numpy() if "decode_compute_bound" in roof else None,
            kv_request_capacity=kv_cap,
        )
    elif req.inferred is not None:
        steps = req.inferred.steps
        sb = attribution.step_breakdown(
            steps,
            run.engine,
            None,
            req.inferred.prefill_time_frac,
            req.inferred.model_time_ns,
            kv_request_capacity=kv_cap,
        )
    if sb is not None:
        sb["tokens_out"] = np.nan_to_num(f64(steps, "num_decode_seqs")) + np.nan_to_num(f64(steps, "num_prefill_seqs"))
    req.step_sums = None
    own = None
    if req.lookup is not None:
        step_chunk = run.chunk_rows or steprows.CHUNK_STEPS
        own = steprows.own_step_sums(
            t, steps, req.lookup, sb, req.st["first_token_ns"].to_numpy(), chunk_rows=step_chunk
        )
    req.lookup = None
    if has_steps:  # what the signals need of the steps table; the rest is dropped (re-read on demand)
        steps = steps.select(["swap_out_bytes", "swap_in_bytes", "num_decode_seqs"])
        run.steps = None
        t.forget("steps")
    # What the map needs of the per-step roofline.
    points, model_time_s, roof_end = [], None, None
    busy_from = busy_to = np.empty(0, np.int64)
    if has_steps:
        points = roofline.roofline_points(roof, peaks)
        model_time_s = float(np.nansum(roof["model_time_s"])) if "model_time_s" in roof else None
        busy_from, busy_to = roof["start_ns"].to_numpy(), roof["end_ns"].to_numpy()
        roof_end = int(roof["end_ns"].max())
    elif req.inferred is not None:
        points = roofline.roofline_points(req.inferred.roofline, peaks)
        model_time_s = req.inferred.summary["model_time_s"]
        busy_from, busy_to = ns(steps, "start_ns"), ns(steps, "end_ns")
    busy = hardware.busy_mask(samples, busy_from, busy_to) if not samples.empty else np.empty(0, bool)
    if not run.keep_frames:
        roof = None
    elif roof is None:
        roof = pd.DataFrame()
    return _Steps(steps, samples, roof, sb, own, points, model_time_s, roof_end, busy)


def _throttle_loss(samples: pd.DataFrame, roof: pd.DataFrame) -> np.ndarray | None:
    """Per step, the fraction of forward time lost to clock throttling (nearest sample's clocks)."""
    if samples.empty:
        return None
    clocked = samples[samples["has_reasons"] | samples["sm_clock_ratio"].notna()]
    if clocked.empty:
        return None
    sj = hardware.step_samples(clocked, roof[["start_ns", "end_ns"]])
    ratio = sj["sm_clock_ratio"].to_numpy(dtype=float)
    throttled = sj["throttled"].fillna(False).to_numpy(dtype=bool)
    return np.where(throttled & np.isfinite(ratio), 1 - np.clip(ratio, 0, 1), 0.0)


@dataclass
class _EngineSamples:
    """Step-less bundles: the engine's own series in the samples."""

    frame: pd.DataFrame | None
    evidence: engine_samples.EngineEvidence | None


def _attributed(run: _Run, req: _Requests, stp: _Steps) -> tuple[pd.DataFrame, _EngineSamples]:
    """Every nanosecond of every request by class; without steps, the engine's own series in the
    samples are the evidence for queueing against waiting for KV blocks."""
    attr = attribution.attribute(req.st, stp.own, stp.sb)
    stp.own = None
    release()
    caps, engine = run.caps, run.engine
    frame = engine_samples.engine_frame(run.t.samples) if not run.has_steps and caps["samples"] else None
    ev = None
    if frame is not None and not frame.empty:
        ev = engine_samples.evidence(frame, engine.get("max_num_seqs"))
        if req.inferred is None:  # inferred steps carry the KV-blocked state themselves
            b = windows.bounds(req.st)
            inst = run.requests.column("instance").to_pandas().to_numpy()
            frac = engine_samples.kv_blocked_fraction(frame, engine.get("max_num_seqs"), inst, b["t2"], b["t3"])
            moved = req.st["queue"].to_numpy().astype(float) * frac
            attr["kv_cache_capacity"] += moved
            attr["queueing"] -= moved
    return attr, _EngineSamples(frame, ev)


@dataclass
class _Windows:
    start_ns: int
    end_ns: int
    duration_s: float
    timeline: pd.DataFrame
    verdicts: list


def _windows(
    run: _Run, req: _Requests, stp: _Steps, attr: pd.DataFrame, eng: _EngineSamples, window_s: float
) -> _Windows:
    """The run's time bounds, the per-window timeline and each window's verdict."""
    st = req.st
    start_ns = int(st["arrival_ns"].min())
    end_ns = int(st["end_ns"].max())
    if stp.roof_end is not None:
        end_ns = max(end_ns, stp.roof_end)
    duration_s = (end_ns - start_ns) / 1e9
    window_ns = max(int(window_s * 1e9), 1)
    n_windows = max(1, int(np.ceil((end_ns - start_ns + 1) / window_ns)))
    if n_windows > MAX_WINDOWS:
        raise ValueError(
            f"--window {window_s} s gives {n_windows} windows over {duration_s:.0f} s; use a larger window"
        )
    samples = stp.samples
    hw_win = hardware.per_window(samples, start_ns, window_ns, n_windows) if not samples.empty else None
    timeline = windows.window_timeline(st, attr, stp.sb, hw_win, start_ns, window_ns, n_windows, req.spans, eng.frame)
    release()
    return _Windows(start_ns, end_ns, duration_s, timeline, windows.window_verdicts(timeline))


@dataclass
class _Judgement:
    sig: classify.Signals
    verdicts: list
    unreachable: list[Unreachable]
    hardware: dict[str, float | None]


def _verdicts(
    run: _Run,
    req: _Requests,
    stp: _Steps,
    attr: pd.DataFrame,
    eng: _EngineSamples,
    win: _Windows,
    token_to_byte: float | None,
) -> _Judgement:
    """The signals the rules read, the ranked verdicts, and the windows and requests each affects."""
    st, done = req.st, req.done
    e2e_total = float(st.loc[done, "e2e_ns"].sum())
    share = {c: (float(attr.loc[done, c].sum()) / e2e_total if e2e_total > 0 else 0.0) for c in attr.columns}
    hw = hardware.summary(stp.samples, stp.busy)
    sig = _signals(
        req.facts, stp.steps, st, attr, share, stp.sb, stp.model_time_s, stp.points, req.lat[0], hw, stp.samples,
        run.peaks, run.engine, done,
    )  # fmt: skip
    sig.values["token_to_byte_s"] = token_to_byte
    if eng.evidence is not None:
        _engine_sample_signals(sig, eng.evidence)
    if req.inferred is not None:
        engine_series.add_signals(sig.values, req.inferred)
    sig.values["frontend_hop"] = bool("frontend_ns" in st and st["frontend_ns"].to_numpy()[done].any())
    sig.unreachable, unreachable = _unreachable(req.facts, run.caps, stp.samples, req.inferred is not None)
    # No finished request: there is no latency to attribute, so no verdict (rather than "balanced").
    verdicts = classify.verdicts(sig) if done.any() else []
    for v in verdicts:
        v.windows = [w.index for w in win.verdicts if w.cls == v.cls and (w.requests_finished or w.requests_arrived)]
        if v.cls in attr.columns:
            frac = attr[v.cls].to_numpy() / np.maximum(st["e2e_ns"].to_numpy(), 1)
            hit = done & (frac >= 0.2)
            v.requests_affected = int(hit.sum())
            order = np.argsort(-np.where(hit, attr[v.cls].to_numpy(), -1))[: min(5, int(hit.sum()))]
            v.sample_request_ids = [str(x) for x in st["request_id"].iloc[order]]
    return _Judgement(sig, verdicts, unreachable, hw)


def _bottleneck_map(
    run: _Run,
    req: _Requests,
    stp: _Steps,
    attr: pd.DataFrame,
    eng: _EngineSamples,
    win: _Windows,
    judged: _Judgement,
    window_s: float,
    slo: Mapping[str, float] | None,
    gpu_hour_cost: float | None,
    instance: str | None,
) -> BottleneckMap:
    meta, hw, verdicts = run.meta, judged.hardware, judged.verdicts
    return BottleneckMap(
        schema_version=MAP_SCHEMA_VERSION,
        run_id=meta.get("run_id"),
        bundle=run.t.path,
        instance=instance,
        workload=dict(meta.get("workload") or {}),
        producer=meta.get("producer"),
        model=(meta.get("model") or {}).get("name"),
        device=run.peaks,
        start_ns=win.start_ns,
        end_ns=win.end_ns,
        duration_s=win.duration_s,
        window_s=float(window_s),
        slo=dict(slo or {}),
        capabilities=run.caps,
        top=verdicts[0] if verdicts else None,
        verdicts=verdicts,
        unreachable=judged.unreachable,
        stages=_stage_stats(req.st, attr, judged.sig, req.done),
        latency=req.lat,
        roofline=stp.points,
        windows=win.verdicts,
        worst_requests=_worst(req.st, attr, req.ttft, req.done),
        kv_usage=_kv_usage(stp.sb) if eng.evidence is None else _kv_usage_samples(eng.frame),
        hardware=hw,
        cost=_cost(req.lat[0], gpu_hour_cost, hw, stp.samples, meta),
        warnings=run.warnings,
    )


def _p(a: np.ndarray, q: float) -> float | None:
    a = a[np.isfinite(a)]
    return float(np.percentile(a, q)) if len(a) else None


class _Done:
    """A column of the completed requests on access (numpy; nothing else is copied)."""

    def __init__(self, st: pd.DataFrame, done: np.ndarray) -> None:
        self.st, self.done = st, done

    def __getitem__(self, col: str) -> np.ndarray:
        return self.st[col].to_numpy()[self.done]


def _done_columns(st: pd.DataFrame, done: np.ndarray) -> _Done:
    return _Done(st, done)


def _union_length(a: np.ndarray, b: np.ndarray) -> float:
    if not len(a):
        return 0.0
    order = np.argsort(a, kind="stable")
    a, b = a[order], b[order]
    reach = np.maximum.accumulate(b)
    prev = np.concatenate([[a[0]], reach[:-1]])
    gaps = np.clip(a - prev, 0, None)
    return float(reach[-1] - a[0] - gaps.sum())


def _signals(
    req_facts, steps, st, attr, share, sb, model_time_s, points, lat_all, hw, samples, peaks, engine, done
) -> classify.Signals:
    v: dict[str, Any] = {}
    d = _done_columns(st, done)
    sec = 1e9
    for stage, key in (
        ("queue", "queue_p95_s"),
        ("tokenize", "tokenize_p95_s"),
        ("receive", "receive_p95_s"),
        ("streaming", "streaming_p95_s"),
    ):
        v[key] = _p(d[stage] / sec, 95)
    v["requeue_s"] = float(d["requeue"].sum()) / sec
    v["recompute_s"] = float(d["recompute"].sum()) / sec
    v["swap_s"] = float(d["swap"].sum()) / sec
    ttft_total = float((d["first_token_ns"] - d["arrival_ns"]).sum())
    v["prefill_stage_share"] = (
        float(d["prefill_compute"].sum()) / float(d["e2e_ns"].sum()) if d["e2e_ns"].sum() else None
    )
    v["prefill_share_of_ttft"] = (
        float((d["prefill_compute"] + d["prefill_wait"]).sum()) / ttft_total if ttft_total > 0 else None
    )
    v["ttft_p50_s"] = lat_all.ttft.p50
    v["tpot_p50_s"] = lat_all.tpot.p50
    v["mean_prompt_tokens"] = req_facts["mean_prompt_tokens"]
    v["preemptions"] = lat_all.preemptions
    v["preempted_requests"] = lat_all.preempted_requests
    v["peak_bw"] = peaks.peak_bandwidth_bytes_per_s
    v["ridge"] = peaks.ridge_point
    v["peaks_source"] = peaks.source
    if sb is not None and not sb.empty:
        dur = sb["dur"].to_numpy()
        kv = sb["kv_usage"].to_numpy()
        v["kv_usage_p95"] = _p(kv, 95)
        v["kv_usage_max"] = float(np.nanmax(kv)) if np.isfinite(kv).any() else None
        v["kv_time_full_frac"] = (
            float(dur[np.nan_to_num(kv) >= attribution.KV_FULL].sum() / dur.sum()) if dur.sum() > 0 else None
        )
        waiting = sb["num_waiting"].to_numpy()
        v["mean_waiting"] = float(np.nanmean(waiting)) if np.isfinite(waiting).any() else None
        mns = engine.get("max_num_seqs")
        running = sb["num_running"].to_numpy()
        v["running_max"] = float(np.nanmax(running)) if np.isfinite(running).any() else None
        v["waiting_max"] = float(np.nanmax(waiting)) if np.isfinite(waiting).any() else None
        w = np.nan_to_num(waiting) > 0
        if mns and w.any() and np.isfinite(running).any():
            v["slots_full_frac"] = float((np.nan_to_num(running[w]) >= mns).mean())
        v["kv_request_capacity"] = req_facts["kv_request_capacity"]
        free = w & ~sb["slots_full"].to_numpy()
        if v["kv_request_capacity"] is not None and free.any() and dur[free].sum() > 0:
            v["kv_capacity_reached_frac"] = float(dur[free & sb["kv_at_capacity"].to_numpy()].sum() / dur[free].sum())
        v["host_frac_of_step"] = (
            float((sb["host_overhead"] - sb["forward_overhead"]).sum() / dur.sum()) if dur.sum() > 0 else None
        )
        v["forward_overhead_frac"] = float(sb["forward_overhead"].sum() / dur.sum()) if dur.sum() > 0 else None
        if model_time_s is not None:
            fwd_t = (sb["dur"] - (sb["host_overhead"] - sb["forward_overhead"]) - sb["pcie_transfer"]).sum() / 1e9
            v["roof_efficiency"] = model_time_s / fwd_t if fwd_t > 0 else None
        b = windows.bounds(st)
        lo, hi = b["t3"][done], b["t5"][done]
        union = _union_length(lo, hi)
        v["idle_frac"] = max(0.0, 1 - float(dur.sum()) / union) if union > 0 else None
        so = np.nan_to_num(f64(steps, "swap_out_bytes")) + np.nan_to_num(f64(steps, "swap_in_bytes"))
        v["swap_bytes"] = float(so.sum()) or None
        swap_time = float(sb["pcie_transfer"].sum()) / sec
        v["swap_bytes_per_s"] = float(so.sum()) / swap_time if swap_time > 0 and so.sum() > 0 else None
        dec = f64(steps, "num_decode_seqs")
        dsel = np.nan_to_num(dec) > 0
        v["decode_batch"] = float(dec[dsel].mean()) if dsel.any() else None
    for p in points:
        if p.phase in ("prefill", "decode"):
            v[f"{p.phase}_ai"] = p.arithmetic_intensity
            v[f"{p.phase}_flops_per_s"] = p.achieved_flops_per_s
            v[f"{p.phase}_bytes_per_s"] = p.achieved_bytes_per_s
            v[f"{p.phase}_flops_util"] = p.flops_utilization
            v[f"{p.phase}_bw_util"] = p.bandwidth_utilization
            v[f"{p.phase}_step_bytes_per_s_p50"] = p.step_bytes_per_s_p50
            v[f"{p.phase}_step_bw_util_p50"] = p.step_bandwidth_utilization_p50
            v[f"{p.phase}_near_roof_frac"] = p.near_roof_fraction
    if "prefill_ai" not in v:
        mixed = next((p for p in points if p.phase == "mixed"), None)
        if mixed is not None:
            v["prefill_ai"], v["prefill_flops_per_s"], v["prefill_flops_util"] = (
                mixed.arithmetic_intensity,
                mixed.achieved_flops_per_s,
                mixed.flops_utilization,
            )
    v["dram_util"] = hw.get("gpm_dram_bw_util_ratio")
    v["sm_active"] = hw.get("gpm_sm_util_ratio")
    v["tensor_active"] = hw.get("gpm_tensor_active_ratio")
    v["proc_cpu"] = hw.get("proc_cpu_ratio")
    v["cpu_max_core"] = hw.get("cpu_util_max_core_ratio")
    pc_tx, pc_rx = (
        hw.get("pcie_tx_bytes_per_s") or hw.get("gpm_pcie_tx_bytes_per_s"),
        hw.get("pcie_rx_bytes_per_s") or hw.get("gpm_pcie_rx_bytes_per_s"),
    )
    v["pcie_bytes_per_s"] = (pc_tx or 0) + (pc_rx or 0) if (pc_tx is not None or pc_rx is not None) else None
    v["busy_throttled_frac"] = hw.get("busy_throttled_fraction")
    v["busy_sm_clock_ratio"] = hw.get("busy_sm_clock_ratio")
    v["throttle_reasons"] = hardware.throttle_reasons(samples) if not samples.empty else {}
    for k in ("power_w", "power_limit_w", "temperature_c"):
        v[k] = hw.get(k)
    v["token_to_byte_s"] = None  # from the pass over the token lists (analyze_full)
    v["unattributed_share"] = share.get(attribution.UNATTRIBUTED, 0.0)
    return classify.Signals(share={c: share.get(c, 0.0) for c in CLASSES if c != "balanced"}, values=v, engine=engine)


def _itl_from_histogram(summary: LatencySummary, t: Tables, warnings: list[str]) -> None:
    """Without per-token times, ITL comes from the server's inter-token-latency histogram (scraped)."""
    scrape = ((t.meta.get("ingest") or {}).get("scrape")) or []
    bounds = next((s.get("itl_bounds_s") for s in scrape if isinstance(s, dict) and s.get("itl_bounds_s")), None)
    h = engine_series.itl_from_histogram(t.samples, bounds)
    if h is None:
        return
    summary.itl = Percentiles(
        mean=h["mean"], p50=h["p50"], p90=h["p90"], p95=h["p95"], p99=h["p99"], max=None, count=int(h["count"])
    )
    warnings.append(
        "ITL percentiles come from vllm:inter_token_latency_seconds (bucket-interpolated, as histogram_quantile): "
        "the spans carry no per-token times"
    )


def _engine_sample_signals(sig: classify.Signals, ev: engine_samples.EngineEvidence) -> None:
    """Step-less bundles: the engine's series in the samples stand in for the step counters."""
    v = sig.values
    v["engine_source"] = "samples"
    v["engine_samples"] = ev.samples
    v["running_cap"], v["cap_source"] = ev.running_cap, ev.cap_source
    v["waiting_frac"] = ev.waiting_frac
    v["mean_waiting"] = ev.mean_waiting
    v["slots_full_frac"] = ev.slots_full_frac
    v["kv_usage_p95"], v["kv_usage_max"], v["kv_time_full_frac"] = ev.kv_usage_p95, ev.kv_usage_max, ev.kv_full_frac
    v["preemptions_counter"] = ev.preemptions
    if ev.preemptions is not None and ev.preemptions > (v.get("preemptions") or 0):
        v["preemptions"] = int(round(ev.preemptions))
    v["prefix_hit_rate_counter"] = ev.prefix_hit_rate


def _kv_usage_samples(eng: pd.DataFrame) -> dict[str, float | None]:
    kv = eng["kv_cache_usage_ratio"].to_numpy()
    kv = kv[np.isfinite(kv)]
    if not len(kv):
        return {}
    return {
        "mean": float(kv.mean()),
        "p95": float(np.percentile(kv, 95)),
        "max": float(kv.max()),
        "time_above_95": float((kv >= attribution.KV_FULL).mean()),
    }


def _request_facts(req: pa.Table) -> dict[str, Any]:
    """What the signals and the unreachable classes need of the requests table."""
    prompt = req.column("prompt_tokens")
    return {
        "mean_prompt_tokens": float(np.nanmean(f64(req, "prompt_tokens"))) if prompt.null_count < len(prompt) else None,
        "mean_output_tokens": float(np.nanmean(out)) if np.isfinite(out := f64(req, "output_tokens")).any() else None,
        "no_last_byte": req.column("last_byte_ns").null_count == req.num_rows,
        "no_tokenize": req.column("tokenize_start_ns").null_count == req.num_rows,
    }


def _unreachable(
    req: dict[str, Any], caps: dict[str, bool], samples: pd.DataFrame, inferred: bool = False
) -> tuple[set[str], list[Unreachable]]:
    out: list[Unreachable] = []
    if not caps["steps"] and inferred:
        out.append(Unreachable("pcie_transfer", "no step records: swap time and bytes per step are unknown"))
    elif not caps["steps"]:
        why = "the bundle has no step records (for example ingested from a deployment), so prefill/decode time cannot be split into compute, waiting and host overhead, and there is no roofline"
        out += [
            Unreachable(c, why)
            for c in ("prefill_compute", "decode_memory_bandwidth", "decode_compute", "host_overhead")
        ]
        out.append(Unreachable("pcie_transfer", "no step records: swap time and bytes per step are unknown"))
    clocks = not samples.empty and (samples["has_reasons"].any() or samples["sm_clock_ratio"].notna().any())
    if not clocks:
        out.append(
            Unreachable(
                "power_thermal", "no GPU samples with clock-event reasons or SM clocks (no agent ran, or no GPU)"
            )
        )
    if req["no_last_byte"]:
        out.append(Unreachable("streaming", "no last_byte_ns: the producer did not record byte delivery"))
    if req["no_tokenize"]:
        out.append(Unreachable("tokenization", "no tokenize_start_ns/tokenize_end_ns recorded"))
    return {u.cls for u in out}, out


def _stage_class(stage: str, attr: pd.DataFrame, sig: classify.Signals) -> str | None:
    s = sig.share
    if stage == "receive" and sig.get("frontend_hop"):
        return "host_overhead"  # the front end's hand-off to the engine (ingested spans)
    if stage in ("receive", "tokenize"):
        return "tokenization"
    if stage == "queue":
        return "kv_cache_capacity" if s.get("kv_cache_capacity", 0) > s.get("queueing", 0) else "queueing"
    if stage in ("requeue", "recompute"):
        return "kv_cache_capacity"
    if stage == "swap":
        return "pcie_transfer"
    if stage == "streaming":
        return "streaming"
    if sig.unreachable >= {"prefill_compute", "decode_memory_bandwidth"}:
        return None
    # Host work plus forward passes off both rooflines (host_overhead in the attribution).
    hf = (sig.get("host_frac_of_step") or 0.0) + (sig.get("forward_overhead_frac") or 0.0)
    if stage in ("prefill_compute", "decode_compute"):
        if hf >= 0.5:
            return "host_overhead"
        if (sig.get("busy_throttled_frac") or 0) >= classify.THROTTLED_FRAC_HIGH:
            return "power_thermal"
        return "prefill_compute" if stage == "prefill_compute" else _decode_class(s)
    if (sig.get("idle_frac") or 0) >= 0.5:
        return "host_overhead"
    return "prefill_compute" if stage == "prefill_wait" else _decode_class(s)


def _decode_class(share: dict[str, float]) -> str:
    """The decode class holding more latency: bandwidth-bound or compute-bound decode."""
    return (
        "decode_compute"
        if share.get("decode_compute", 0) > share.get("decode_memory_bandwidth", 0)
        else "decode_memory_bandwidth"
    )


def _stage_stats(st: pd.DataFrame, attr: pd.DataFrame, sig: classify.Signals, done: np.ndarray) -> list[StageStats]:
    d = _done_columns(st, done)
    total = float(d["e2e_ns"].sum())
    group_of = {s: g for g, members in STAGE_GROUPS.items() for s in members}
    out = []
    for stage in STAGES:
        v = d[stage].astype(float) / 1e9
        fin = v[np.isfinite(v)]
        p50, p95, p99 = (float(x) for x in np.percentile(fin, [50, 95, 99])) if len(fin) else (None, None, None)
        out.append(
            StageStats(
                stage=stage,
                group=group_of[stage],
                share=float(v.sum() * 1e9 / total) if total > 0 else 0.0,
                mean_s=float(v.mean()) if len(v) else None,
                p50_s=p50,
                p95_s=p95,
                p99_s=p99,
                max_s=float(v.max()) if len(v) else None,
                total_s=float(v.sum()),
                requests_with_stage=int((v > 0).sum()),
                cls=_stage_class(stage, attr, sig),
            )
        )
    return out


def _top_stable(v: np.ndarray, k: int) -> np.ndarray:
    """``np.argsort(-v, kind="stable")[:k]`` (largest first, ties in row order) without sorting
    every row: only the rows at or above the k-th largest value are sorted."""
    if k <= 0 or len(v) <= k or v.dtype.kind != "i":
        return np.argsort(-v, kind="stable")[:k]
    kth = np.partition(v, len(v) - k)[len(v) - k]
    cand = np.flatnonzero(v >= kth)
    return cand[np.argsort(-v[cand], kind="stable")[:k]]


def _worst(st: pd.DataFrame, attr: pd.DataFrame, ttft_s: np.ndarray, done: np.ndarray) -> list[RequestExplanation]:
    idx = np.flatnonzero(done)
    if not len(idx):
        return []
    e2e = st["e2e_ns"].to_numpy()[idx]
    top = idx[_top_stable(e2e, WORST_REQUESTS)]
    out = []
    for i in top:
        row = st.iloc[i]
        stages_s = {s: float(row[s]) / 1e9 for s in STAGES if row[s] > 0}
        dom_stage = max(stages_s, key=stages_s.get) if stages_s else "queue"
        cls, why = attribution.request_label(attr.iloc[i].to_dict(), float(row["e2e_ns"]))
        e2e_s = float(row["e2e_ns"]) / 1e9
        why += f"; longest stage {dom_stage} {stages_s.get(dom_stage, 0):.3f} s"
        if row["preemptions"]:
            why += f"; preempted {int(row['preemptions'])}x"
        ttft = ttft_s[i]
        out.append(
            RequestExplanation(
                request_id=str(row["request_id"]),
                workload_class=None if row["workload_class"] is None else str(row["workload_class"]),
                e2e_s=e2e_s,
                ttft_s=None if pd.isna(ttft) else float(ttft),
                stages_s=stages_s,
                dominant_stage=dom_stage,
                cls=cls,
                why=why,
            )
        )
    return out


def _kv_usage(sb: pd.DataFrame | None) -> dict[str, float | None]:
    if sb is None or sb.empty:
        return {}
    kv = sb["kv_usage"].to_numpy()
    if not np.isfinite(kv).any():
        return {}
    dur = sb["dur"].to_numpy()
    ok = np.isfinite(kv)
    return {
        "mean": float(np.average(kv[ok], weights=np.maximum(dur[ok], 1))),
        "p95": _p(kv, 95),
        "max": float(np.nanmax(kv)),
        "time_above_95": float(dur[ok & (kv >= attribution.KV_FULL)].sum() / max(dur.sum(), 1)),
    }


def _cost(lat_all, gpu_hour_cost: float | None, hw: dict, samples: pd.DataFrame, meta: dict) -> CostSummary:
    out_tokens = lat_all.output_token_throughput * lat_all.duration_s
    total_tokens = lat_all.total_token_throughput * lat_all.duration_s
    c = CostSummary(gpu_hour_cost=gpu_hour_cost)
    if gpu_hour_cost is not None and lat_all.duration_s > 0:
        n_dev = int((meta.get("device") or {}).get("count") or 0) or max(
            1, int(samples["device"].nunique()) if not samples.empty and samples["device"].notna().any() else 1
        )
        dollars = gpu_hour_cost * n_dev * lat_all.duration_s / 3600
        c.cost_per_million_output_tokens = dollars / out_tokens * 1e6 if out_tokens > 0 else None
        c.cost_per_million_total_tokens = dollars / total_tokens * 1e6 if total_tokens > 0 else None
    if hw.get("energy_j") is not None:
        c.energy_j = hw["energy_j"]
        c.energy_per_output_token_j = hw["energy_j"] / out_tokens if out_tokens > 0 else None
    return c


def request_stages(bundle_or_path: Bundle | Tables | str | os.PathLike[str]) -> pd.DataFrame:
    """Per-request stages (int64 ns, one column per stage, adding up to ``e2e_ns``) of a bundle."""
    t = load(bundle_or_path)
    requests, steps = t.lean("requests"), t.lean("steps")
    life = stages.lifecycle(requests)
    sums = None
    if t.capabilities["steps"] and requests.num_rows:
        t4 = life["t4"].to_numpy()
        sums = steprows.reduce_steps(t, steps, _lookup(requests, life), t4, list_sums=False)[1]
    return stages.request_stages(requests, sums=sums, life=life)


def request_metrics(bundle_or_path: Bundle | Tables | str | os.PathLike[str]) -> pd.DataFrame:
    """Per-request TTFT / TPOT / E2E (seconds) as ``vllm bench serve`` defines them."""
    return latency.request_metrics(load(bundle_or_path).lean("requests"))


def step_roofline(
    bundle_or_path: Bundle | Tables | str | os.PathLike[str], peaks: DevicePeaks | None = None
) -> pd.DataFrame:
    """Per-step analytic FLOPs/bytes, achieved rates, intensity and bound (peaks from meta when not given)."""
    t = load(bundle_or_path)
    return roofline.step_roofline(t.steps, t.meta.get("model"), peaks or device_peaks(t.meta.get("device")))


def request_timeline(
    bundle_or_analysis: Analysis | Bundle | Tables | str | os.PathLike[str], request_id: str
) -> stages.RequestTimeline | None:
    """One request for a waterfall: lifecycle bounds and intervals (preempted -> resumed spans
    included) and the steps it took part in, all in bundle-clock ns; None when the id is unknown.

    Takes an :class:`Analysis` (its tables are reused), an opened bundle, ``Tables`` or a path.
    """
    t = bundle_or_analysis.tables if isinstance(bundle_or_analysis, Analysis) else load(bundle_or_analysis)
    return stages.request_timeline(t.requests, t.steps if t.capabilities["steps"] else None, request_id)


def window_timeline(bundle_or_path: Bundle | Tables | str | os.PathLike[str], *, window_s: float = 1.0) -> pd.DataFrame:
    """Per-window timeline: arrivals, completions, ns attributed per class, engine and hardware means."""
    return analyze_full(bundle_or_path, window_s=window_s).timeline


__all__ = [
    "Analysis",
    "NA_NS",
    "analyze",
    "analyze_full",
    "request_metrics",
    "request_stages",
    "request_timeline",
    "step_roofline",
    "window_timeline",
]
