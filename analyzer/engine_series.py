"""Engine steps inferred from a server's own series, for bundles without step records.

A vLLM deployment exports no per-step records, but its counters say, between two samples, how
many engine steps ran (``engine_steps_total``: ``vllm:iteration_tokens_total_count``), how many
prompt tokens they computed (prompt minus cached tokens, counted as each prefill completes)
and how many tokens they generated (``generation_tokens_total``), and its gauges how many
requests ran and waited and how full the KV cache was. Between two samples the engine ran
while any request of the instance was between first scheduled and finished (from the spans).

Each such busy piece becomes one *inferred step*: a row shaped like the steps table
(``num_prefill_tokens``, ``num_decode_seqs``, KV blocks, running, waiting, preemptions) that
stands for all the real steps inside it. Its running and waiting counts are the time-weighted
mean number of the instance's requests between first scheduled and finished, and between
arrival at the engine and first scheduled, over the piece (from the spans: exact at any scrape
interval, where a gauge read once a second may miss most of the load; a request vLLM preempts
still counts as running); the running gauge stands in only where no request was in flight. Its
FLOPs and bytes come from the model config (:func:`~bottleneck_map.analyzer.roofline.step_costs`,
the weights read once per real step; vLLM's own ``estimated_*`` counters replace the totals when
it exports them), and its roofline time from the device's peaks.
:func:`~bottleneck_map.analyzer.attribution.step_breakdown`
then splits inferred steps exactly as it splits measured ones, with the whole step as forward
time (the series do not separate host work): a step at :data:`~bottleneck_map.analyzer.roofline.ROOF_NEAR`
of its roofline speed or more goes to prefill_compute / decode_memory_bandwidth (or
decode_compute) by the prefill part of the modelled time, a slower one to host_overhead. Every evidence line built on them says that they are inferred, and from which
series.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from bottleneck_map.analyzer.data import f64
from bottleneck_map.analyzer.result import DevicePeaks
from bottleneck_map.analyzer.roofline import ModelShape, step_costs

COUNTERS = (
    "engine_steps_total",
    "generation_tokens_total",
    "prompt_tokens_total",
    "prompt_tokens_cached_total",
    "prefill_computed_tokens_total",
    "num_preemptions_total",
    "estimated_flops_total",
    "estimated_read_bytes_total",
    "estimated_write_bytes_total",
)
GAUGES = ("num_requests_running", "num_requests_waiting", "kv_cache_usage_ratio")
SERIES_COLUMNS = (*COUNTERS, *GAUGES)
# KV blocks assumed when the server states none: only the usage ratio matters then.
NOMINAL_BLOCKS = 1000.0


@dataclass
class InferredSteps:
    """Inferred steps (a steps-shaped table), their roofline frame and what they add up to."""

    steps: pa.Table
    roofline: pd.DataFrame
    model_time_ns: np.ndarray  # per inferred step; NaN without a model shape or peaks
    prefill_time_frac: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)


def series_frame(samples: pa.Table) -> pd.DataFrame:
    """Samples rows that carry the step counter, by instance and time (the columns above)."""
    if samples.num_rows == 0 or "engine_steps_total" not in samples.column_names:
        return pd.DataFrame()
    names = set(samples.column_names)
    df = pd.DataFrame({c: f64(samples, c) if c in names else np.full(samples.num_rows, np.nan) for c in SERIES_COLUMNS})
    df["ts_ns"] = samples.column("ts_ns").to_numpy().astype(np.int64)
    df["instance"] = samples.column("instance").to_pandas().fillna("").astype(str).to_numpy()
    df = df[np.isfinite(df["engine_steps_total"].to_numpy())]
    return df.sort_values(["instance", "ts_ns"], kind="stable", ignore_index=True)


def _increase(v: np.ndarray) -> np.ndarray:
    """Per interval increase of a counter (a drop is a reset: the new value counts; NaN stays NaN)."""
    d = np.diff(v)
    return np.where(d >= 0, d, v[1:])


def _busy_segments(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The union of intervals [lo, hi) as sorted disjoint segments."""
    ok = hi > lo
    lo, hi = lo[ok], hi[ok]
    if not len(lo):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], hi[order]
    reach = np.maximum.accumulate(hi)
    new = np.concatenate([[True], lo[1:] > reach[:-1]])
    starts = lo[new]
    ends = np.append(reach[np.flatnonzero(new)[1:] - 1], reach[-1])
    return starts, ends


def infer_steps(
    samples: pa.Table,
    busy_lo: np.ndarray,
    busy_hi: np.ndarray,
    busy_instance: np.ndarray,
    model: Mapping[str, Any] | None,
    peaks: DevicePeaks,
    engine: Mapping[str, Any] | None,
    mean_prompt: float | None,
    mean_output: float | None,
    *,
    queued_from: np.ndarray | None = None,
) -> InferredSteps | None:
    """Inferred steps from the samples' engine counters; None when no instance has two samples
    with the step counter (``collect --scrape``, or Prometheus with vLLM's iteration histogram).

    ``busy_lo``/``busy_hi``/``busy_instance``: per request, first scheduled and finished (ns) and
    its instance; the engine of an instance is taken as busy while any of its requests is.
    ``queued_from``: per request, when it reached the engine's queue (its wait lasts until
    ``busy_lo``); without it, waiting comes from the gauge.
    """
    df = series_frame(samples)
    if df.empty:
        return None
    shape = ModelShape.from_meta(model)
    blocks = float((engine or {}).get("num_kv_blocks") or NOMINAL_BLOCKS)
    prompt = float(mean_prompt or 0.0)
    ctx_decode = prompt + 0.5 * float(mean_output or 0.0)  # mean context of a decode row
    single = df["instance"].nunique() == 1
    inst_req = np.asarray(pd.Series(busy_instance).fillna("").astype(str))
    rows: list[dict[str, Any]] = []
    for name, g in df.groupby("instance", sort=False):
        if len(g) < 2:
            continue
        sel = np.ones(len(inst_req), bool) if single else inst_req == name
        seg_lo, seg_hi = _busy_segments(busy_lo[sel].astype(np.int64), busy_hi[sel].astype(np.int64))
        in_flight = _Occupancy(busy_lo[sel], busy_hi[sel])
        queued = _Occupancy(queued_from[sel], busy_lo[sel]) if queued_from is not None else None
        ts = g["ts_ns"].to_numpy()
        inc = {c: _increase(g[c].to_numpy()) for c in COUNTERS}
        gauges = {c: g[c].to_numpy() for c in GAUGES}
        opened = 0  # the sample since which the engine has been stepping without a counted step
        for i in range(len(ts) - 1):
            k = inc["engine_steps_total"][i]
            if not k > 0:
                # No step finished here. With requests in flight one long step spans the interval
                # (steps count when they end): it joins the next interval that counts one.
                if not _pieces(int(ts[i]), int(ts[i + 1]), seg_lo, seg_hi, whole=False):
                    opened = i + 1
                continue
            a, b = int(ts[opened]), int(ts[i + 1])
            opened = i + 1
            pieces = _pieces(a, b, seg_lo, seg_hi)
            total = sum(e - s for s, e in pieces)
            # Prompt tokens count when a request's prefill completes (the step that gives its first
            # token); the computed-tokens histogram only when the request finishes, so it is the
            # fallback for servers without the prompt counter.
            computed = inc["prompt_tokens_total"][i] - np.nan_to_num(inc["prompt_tokens_cached_total"][i])
            if not np.isfinite(computed):
                computed = inc["prefill_computed_tokens_total"][i]
            computed = np.nan_to_num(computed)
            gen = np.nan_to_num(inc["generation_tokens_total"][i])
            est = {c: inc[c][i] for c in ("estimated_flops_total", "estimated_read_bytes_total")}
            est_w = inc["estimated_write_bytes_total"][i]
            for s, e in pieces:
                f = (e - s) / total
                rows.append(
                    {
                        "instance": name,
                        "start_ns": int(s),
                        "end_ns": int(e),
                        "steps": k * f,
                        "prefill_tokens": max(float(computed), 0.0) * f,
                        "decode_tokens": gen * f,
                        "est_flops": est["estimated_flops_total"] * f,
                        "est_bytes": (est["estimated_read_bytes_total"] + np.nan_to_num(est_w)) * f,
                        "running": in_flight.mean(s, e, _last(gauges["num_requests_running"], i)),
                        "waiting": queued.mean(s, e, _last(gauges["num_requests_waiting"], i), empty_is_zero=True)
                        if queued is not None
                        else _last(gauges["num_requests_waiting"], i),
                        "kv_usage": np.nanmax(
                            [gauges["kv_cache_usage_ratio"][i], gauges["kv_cache_usage_ratio"][i + 1]]
                        )
                        if np.isfinite(gauges["kv_cache_usage_ratio"][i : i + 2]).any()
                        else np.nan,
                        "preempted": np.nan_to_num(inc["num_preemptions_total"][i]) * f,
                    }
                )
    if not rows:
        return None
    r = pd.DataFrame(rows)
    return _build(r, shape, peaks, blocks, prompt, ctx_decode)


class _Occupancy:
    """How many of the intervals [lo, hi) are open, integrated over time: the mean count over any
    span in two binary searches (``I(t) = sum(t - lo, lo < t) - sum(t - hi, hi < t)``)."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray) -> None:
        lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
        ok = hi > lo
        self.t0 = int(lo[ok].min()) if ok.any() else 0
        # relative float seconds: products of counts and times stay exact enough
        self.lo = np.sort((lo[ok] - self.t0) / 1e9)
        self.hi = np.sort((hi[ok] - self.t0) / 1e9)
        self.cum_lo = np.concatenate([[0.0], np.cumsum(self.lo)])
        self.cum_hi = np.concatenate([[0.0], np.cumsum(self.hi)])

    def _integral(self, t: float) -> float:
        i, j = np.searchsorted(self.lo, t, side="left"), np.searchsorted(self.hi, t, side="left")
        return (i * t - self.cum_lo[i]) - (j * t - self.cum_hi[j])

    def mean(self, a: int, b: int, otherwise: float, empty_is_zero: bool = False) -> float:
        """The mean count over [a, b); ``otherwise`` when no interval overlaps it (with
        ``empty_is_zero``, only when there are no intervals at all)."""
        if not len(self.lo) or b <= a:
            return otherwise
        x, y = (a - self.t0) / 1e9, (b - self.t0) / 1e9
        area = max(self._integral(y) - self._integral(x), 0.0)
        # rounded: a count held through the whole span comes out exact, not a hair under
        return round(float(area / (y - x)), 9) if area > 0 or empty_is_zero else otherwise


def _last(v: np.ndarray, i: int) -> float:
    """A gauge over an interval: its value at the interval's end, else its start."""
    return float(v[i + 1]) if np.isfinite(v[i + 1]) else float(v[i])


def _pieces(a: int, b: int, lo: np.ndarray, hi: np.ndarray, whole: bool = True) -> list[tuple[int, int]]:
    """The busy parts of [a, b). With ``whole``, the whole interval when no request says when the
    engine ran (steps ran although no request was in flight: the counter is trusted)."""
    if not len(lo):
        return [(a, b)] if whole else []
    j0, j1 = np.searchsorted(hi, a, side="right"), np.searchsorted(lo, b, side="left")
    out = [(max(a, int(lo[j])), min(b, int(hi[j]))) for j in range(j0, j1) if min(b, hi[j]) > max(a, lo[j])]
    return out or ([(a, b)] if whole else [])


def _costs(shape: ModelShape, steps, tokens, seqs, sum_ctx, sum_qc) -> tuple[np.ndarray, np.ndarray]:
    """FLOPs and bytes of ``steps`` real steps sharing these aggregates (weights read once per step)."""
    k = np.maximum(steps, 1e-9)
    flops, nbytes = step_costs(shape, tokens / k, seqs / k, sum_ctx / k, sum_qc / k)
    return flops * k, nbytes * k


def _build(
    r: pd.DataFrame, shape: ModelShape | None, peaks: DevicePeaks, blocks: float, prompt: float, ctx_decode: float
) -> InferredSteps:
    n = len(r)
    k, p, d = r["steps"].to_numpy(), r["prefill_tokens"].to_numpy(), r["decode_tokens"].to_numpy()
    dur_s = (r["end_ns"].to_numpy() - r["start_ns"].to_numpy()) / 1e9
    p_seqs = np.where(p > 0, p / max(prompt, 1.0), 0.0)
    pf, pb = peaks.peak_flops or 0.0, peaks.peak_bandwidth_bytes_per_s or 0.0
    model_t = np.full(n, np.nan)
    ptf = np.where(p + d > 0, p / np.maximum(p + d, 1e-9), 0.0)
    flops = nbytes = f_p = b_p = f_d = b_d = np.full(n, np.nan)
    source = "none"
    if shape is not None:
        # The whole of the steps, then their decode rows alone: prefill is what its tokens add
        # (in mixed steps the weights are read for both at once), as the measured roofline counts it.
        flops, nbytes = _costs(shape, k, p + d, p_seqs + d, p + d * ctx_decode, p * prompt + d * ctx_decode)
        f_d, b_d = _costs(shape, k, d, d, d * ctx_decode, d * ctx_decode)
        f_d, b_d = np.where(d > 0, f_d, 0.0), np.where(d > 0, b_d, 0.0)
        f_p, b_p = flops - f_d, nbytes - b_d
        source = "model config"
    est_f, est_b = r["est_flops"].to_numpy(), r["est_bytes"].to_numpy()
    use_est = np.isfinite(est_f) & (est_f > 0) & np.isfinite(est_b) & (est_b > 0)
    if use_est.any():
        scale_f = np.where(use_est & (flops > 0), est_f / np.where(flops > 0, flops, 1), 1.0)
        scale_b = np.where(use_est & (nbytes > 0), est_b / np.where(nbytes > 0, nbytes, 1), 1.0)
        flops, nbytes = np.where(use_est, est_f, flops), np.where(use_est, est_b, nbytes)
        f_p, f_d, b_p, b_d = f_p * scale_f, f_d * scale_f, b_p * scale_b, b_d * scale_b
        source = (
            "vllm:estimated_*" if use_est.all() else f"vllm:estimated_* ({use_est.mean():.0%} of pieces), model config"
        )
    if pf > 0 and pb > 0 and np.isfinite(flops).any():
        model_t = np.maximum(flops / pf, nbytes / pb)
        t_d = np.maximum(f_d / pf, b_d / pb)
        ptf = np.where(model_t > 0, np.clip(1 - t_d / np.where(model_t > 0, model_t, 1), 0, 1), ptf)
    kv = r["kv_usage"].to_numpy()
    used = np.where(np.isfinite(kv), kv * blocks, np.nan)
    steps = pa.table(
        {
            "step_id": pa.array(np.arange(n, dtype=np.int64)),
            "start_ns": pa.array(r["start_ns"].to_numpy().astype(np.int64)),
            "end_ns": pa.array(r["end_ns"].to_numpy().astype(np.int64)),
            "num_prefill_tokens": pa.array(p),
            "num_prefill_seqs": pa.array(p_seqs),
            "num_decode_seqs": pa.array(d),
            "kv_blocks_used": pa.array(used, from_pandas=True),
            "kv_blocks_free": pa.array(np.where(np.isfinite(used), blocks - used, np.nan), from_pandas=True),
            "num_running": pa.array(r["running"].to_numpy(), from_pandas=True),
            "num_waiting": pa.array(r["waiting"].to_numpy(), from_pandas=True),
            "num_preempted": pa.array(r["preempted"].to_numpy()),
            "num_swapped": pa.array(np.zeros(n)),
            "swap_out_bytes": pa.array(np.zeros(n)),
            "swap_in_bytes": pa.array(np.zeros(n)),
            "instance": pa.array(r["instance"].astype(str).to_numpy()),
            # host work inside steps is not exported: unknown, not zero
            **{c: pa.nulls(n, pa.float64()) for c in ("schedule_ns", "prepare_ns", "sample_ns", "postprocess_ns")},
            "swap_ns": pa.nulls(n, pa.float64()),
            "forward_ns": pa.nulls(n, pa.float64()),
        }
    )
    roof = _roofline_frame(r, dur_s, ptf, f_p, b_p, f_d, b_d, p, d, p_seqs)
    # each piece's roofline time over its time, for both its rows (the step is not split in two)
    eff = np.where(dur_s > 0, model_t / np.where(dur_s > 0, dur_s, 1), np.nan)
    roof["roof_efficiency"] = np.concatenate([eff[p > 0], eff[d > 0]])
    total_s = float(dur_s.sum())
    summary = {
        "pieces": n,
        "steps": float(k.sum()),
        "busy_s": total_s,
        "steps_per_s": float(k.sum()) / total_s if total_s > 0 else None,
        "tokens_per_step": float((p + d).sum() / k.sum()) if k.sum() > 0 else None,
        "decode_batch": float(d.sum() / k.sum()) if k.sum() > 0 else None,
        "mean_step_s": total_s / float(k.sum()) if k.sum() > 0 else None,
        "cost_source": source,
        "model_time_s": float(np.nansum(model_t)) if np.isfinite(model_t).any() else None,
    }
    return InferredSteps(steps, roof, model_t * 1e9, ptf, summary)


def _roofline_frame(r, dur_s, ptf, f_p, b_p, f_d, b_d, p, d, p_seqs) -> pd.DataFrame:
    """Two rows per inferred step (its prefill part and its decode part, time split by the modelled
    prefill fraction), in the columns :func:`~bottleneck_map.analyzer.roofline.roofline_points` reads."""
    parts = []
    for phase, frac, fl, by, tok, seqs in (
        ("prefill", ptf, f_p, b_p, p, p_seqs),
        ("decode", 1 - ptf, f_d, b_d, d, d),
    ):
        t = dur_s * frac
        keep = tok > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            parts.append(
                pd.DataFrame(
                    {
                        "start_ns": r["start_ns"].to_numpy()[keep],
                        "end_ns": r["end_ns"].to_numpy()[keep],
                        "phase": phase,
                        "tokens": tok[keep],
                        "seqs": seqs[keep],
                        "prefill_tokens": p[keep] if phase == "prefill" else 0.0,
                        "time_s": t[keep],
                        "flops": fl[keep],
                        "bytes": by[keep],
                        "achieved_flops_per_s": np.where(t[keep] > 0, fl[keep] / t[keep], np.nan),
                        "achieved_bytes_per_s": np.where(t[keep] > 0, by[keep] / t[keep], np.nan),
                        "arithmetic_intensity": fl[keep] / by[keep],
                    }
                )
            )
    return pd.concat(parts, ignore_index=True)


SERIES_USED = (
    "vllm:iteration_tokens_total (count: steps, sum: tokens)",
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_total - vllm:prompt_tokens_cached_total",
    "vllm:num_requests_running/waiting",
    "vllm:kv_cache_usage_perc",
)


def add_signals(values: dict[str, Any], inferred: InferredSteps) -> None:
    """What the rules read of inferred steps (``values`` are :class:`~bottleneck_map.analyzer.classify.Signals` values)."""
    s = inferred.summary
    values["inferred_steps"] = s
    if s.get("decode_batch") is not None:
        values["decode_batch"] = s["decode_batch"]  # per real step, not per inferred one


def evidence_text(values: Mapping[str, Any]) -> str | None:
    """The line every verdict built on inferred steps carries: that they are inferred, and from what."""
    s = values.get("inferred_steps")
    if not s:
        return None
    parts = [f"inferred from the server's series ({', '.join(SERIES_USED)}), not measured per step:"]
    parts.append(f"{s['steps']:.0f} engine steps in {s['busy_s']:.1f} s busy")
    if s.get("mean_step_s") is not None:
        parts.append(f"mean step {s['mean_step_s'] * 1e3:.1f} ms")
    if s.get("tokens_per_step") is not None:
        parts.append(f"{s['tokens_per_step']:.1f} tokens/step, decode batch {s['decode_batch']:.1f}")
    parts.append(f"FLOPs and bytes from {s['cost_source']}")
    return " ".join([parts[0], "; ".join(parts[1:])])


def itl_from_histogram(samples: pa.Table, bounds: list[float] | None) -> dict[str, float | None] | None:
    """ITL ``mean``, ``p50``, ``p90``, ``p95``, ``p99`` and ``count`` from the inter-token-latency
    histogram the samples carry (its increase over the run, summed over instances), or None
    without one. Percentiles are interpolated inside buckets as Prometheus' ``histogram_quantile``
    does; the mean is the histogram's sum over its count."""
    if not bounds or samples.num_rows == 0 or "itl_bucket_counts" not in samples.column_names:
        return None
    col = samples.column("itl_bucket_counts")
    inst = samples.column("instance").to_pandas().fillna("").astype(str).to_numpy()
    ts = samples.column("ts_ns").to_numpy()
    first: dict[str, tuple[int, list[float]]] = {}
    last: dict[str, tuple[int, list[float]]] = {}
    for i, v in enumerate(col.to_pylist()):
        if not v or len(v) != len(bounds) + 1:
            continue
        key = inst[i]
        if key not in first or ts[i] < first[key][0]:
            first[key] = (ts[i], v)
        if key not in last or ts[i] > last[key][0]:
            last[key] = (ts[i], v)
    if not last:
        return None
    total = np.zeros(len(bounds) + 1)
    for key, (_, v) in last.items():
        total += np.clip(np.asarray(v, float) - np.asarray(first[key][1], float), 0, None)
    if total[-1] <= 0:
        return None
    from bottleneck_map.analyzer.latency import histogram_quantiles

    p50, p90, p95, p99 = histogram_quantiles(bounds, total.tolist(), (0.5, 0.9, 0.95, 0.99))
    sums = series_sum_increase(samples, "itl_seconds_total")
    counts = series_sum_increase(samples, "itl_count_total")
    mean = sums / counts if sums is not None and counts else None
    return {"mean": mean, "p50": p50, "p90": p90, "p95": p95, "p99": p99, "count": float(total[-1])}


def series_sum_increase(samples: pa.Table, col: str) -> float | None:
    """A counter column's increase over the run, summed over instances (None when absent)."""
    if col not in samples.column_names:
        return None
    v = f64(samples, col)
    inst = samples.column("instance").to_pandas().fillna("").astype(str).to_numpy()
    ts = samples.column("ts_ns").to_numpy()
    total, seen = 0.0, False
    for key in np.unique(inst):
        sel = (inst == key) & np.isfinite(v)
        if sel.sum() < 2:
            continue
        order = np.argsort(ts[sel], kind="stable")
        total += float(_increase(v[sel][order]).sum())
        seen = True
    return total if seen else None
