"""Engine series from the samples: the only engine evidence a step-less bundle has.

Bundles ingested from a deployment (``collect``: spans + Prometheus) have no step records;
their samples carry the serving engine's own series (vLLM names): ``num_requests_running``,
``num_requests_waiting``, ``kv_cache_usage_ratio`` (0..1), and the counters
``num_preemptions_total``, ``prefix_cache_queries_total``, ``prefix_cache_hits_total``
(raw counter values: increases are summed per instance, a drop is a counter reset).

Each series is read as sample-and-hold per instance (a value holds until the next sample).
From it come the evidence for ``queueing`` (requests waiting while running is at its cap)
and ``kv_cache_capacity`` (KV usage near full, preemptions rising), and the split of each
request's queue time between the two, by the same rule as with steps
(:mod:`~bottleneck_map.analyzer.attribution`): a request's wait while a batch slot is free and
KV usage is at or above ``KV_BLOCKING`` (or preemptions rose) is a wait for KV blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from bottleneck_map.analyzer.attribution import KV_BLOCKING, KV_FULL
from bottleneck_map.analyzer.data import f64

ENGINE_COLUMNS = (
    "num_requests_running",
    "num_requests_waiting",
    "kv_cache_usage_ratio",
    "num_preemptions_total",
    "prefix_cache_queries_total",
    "prefix_cache_hits_total",
)


def engine_frame(samples: pa.Table) -> pd.DataFrame:
    """Samples that carry any engine column: ``ts_ns``, ``instance`` and the engine columns, by instance and time."""
    if samples.num_rows == 0:
        return pd.DataFrame(columns=["ts_ns", "instance", *ENGINE_COLUMNS])
    df = pd.DataFrame({c: f64(samples, c) for c in ENGINE_COLUMNS})
    df["ts_ns"] = samples.column("ts_ns").to_numpy().astype(np.int64)
    inst = samples.column("instance").to_pandas()
    df["instance"] = inst.fillna("").astype(str).to_numpy()
    df = df[df[list(ENGINE_COLUMNS)].notna().any(axis=1)]
    return df.sort_values(["instance", "ts_ns"], kind="stable", ignore_index=True)


def counter_increase(df: pd.DataFrame, col: str) -> float | None:
    """Summed increase of a counter over the run, per instance (a drop is a reset: the new value counts)."""
    total, seen = 0.0, False
    for _, g in df[["instance", col]].dropna().groupby("instance", sort=False):
        v = g[col].to_numpy()
        if len(v) < 2:
            seen = seen or len(v) == 1
            continue
        d = np.diff(v)
        total += float(np.where(d >= 0, d, v[1:]).sum())
        seen = True
    return total if seen else None


@dataclass
class EngineEvidence:
    """Engine figures from the samples (None when the series is absent)."""

    samples: int
    mean_waiting: float | None
    waiting_frac: float | None  # samples with requests waiting
    running_cap: float | None  # max_num_seqs from meta, else the most running seen
    cap_source: str  # "max_num_seqs" | "observed"
    slots_full_frac: float | None  # of samples with requests waiting, those with running at the cap
    kv_usage_p95: float | None
    kv_usage_max: float | None
    kv_full_frac: float | None  # samples with KV usage >= KV_FULL
    preemptions: float | None  # increase of num_preemptions_total
    prefix_hit_rate: float | None  # hits / queries increase


def evidence(df: pd.DataFrame, max_num_seqs: int | None) -> EngineEvidence:
    run, wait, kv = (df[c].to_numpy() for c in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_ratio"))
    cap, cap_source = _cap(run, max_num_seqs)
    # each instance's running count against its own cap
    inst_cap = df.groupby("instance", sort=False)["num_requests_running"].transform(
        lambda r: _cap(r.to_numpy(), max_num_seqs)[0] or np.nan
    )
    w = np.isfinite(wait)
    waiting = w & (np.nan_to_num(wait) > 0)
    slots = None
    known = waiting & np.isfinite(run) & np.isfinite(inst_cap.to_numpy())
    if known.any():
        slots = float((run[known] >= inst_cap.to_numpy()[known]).mean())
    k = kv[np.isfinite(kv)]
    q, h = counter_increase(df, "prefix_cache_queries_total"), counter_increase(df, "prefix_cache_hits_total")
    return EngineEvidence(
        samples=len(df),
        mean_waiting=float(wait[w].mean()) if w.any() else None,
        waiting_frac=float(waiting[w].mean()) if w.any() else None,
        running_cap=cap,
        cap_source=cap_source,
        slots_full_frac=slots,
        kv_usage_p95=float(np.percentile(k, 95)) if len(k) else None,
        kv_usage_max=float(k.max()) if len(k) else None,
        kv_full_frac=float((k >= KV_FULL).mean()) if len(k) else None,
        preemptions=counter_increase(df, "num_preemptions_total"),
        prefix_hit_rate=h / q if q and h is not None else None,
    )


def _cap(running: np.ndarray, max_num_seqs: int | None) -> tuple[float | None, str]:
    if max_num_seqs:
        return float(max_num_seqs), "max_num_seqs"
    r = running[np.isfinite(running)]
    return (float(r.max()), "observed") if len(r) and r.max() > 0 else (None, "observed")


def kv_blocked_fraction(
    df: pd.DataFrame, max_num_seqs: int | None, instance: np.ndarray, t_from: np.ndarray, t_to: np.ndarray
) -> np.ndarray:
    """Per request, the fraction of ``t_from`` -> ``t_to`` (its own wait: that it waits, the
    request itself says) during which its instance's samples say admission was blocked by KV
    blocks: running below the cap, and KV usage at or above ``KV_BLOCKING`` or preemptions rising
    (sample-and-hold; an empty interval takes the state at its start; a request without samples
    for its instance gets 0)."""
    out = np.zeros(len(t_from))
    if df.empty or not len(t_from):
        return out
    inst = np.asarray(pd.Series(instance).fillna("").astype(str))
    single = df["instance"].nunique() == 1  # one engine series: it serves every request
    for name, g in df.groupby("instance", sort=False):
        sel = np.arange(len(inst)) if single else np.flatnonzero(inst == name)
        if not len(sel):
            continue
        ts = g["ts_ns"].to_numpy()
        run = g["num_requests_running"].to_numpy()
        cap, _ = _cap(run, max_num_seqs)
        free = ~(np.nan_to_num(run) >= cap) if cap is not None else np.zeros(len(g), bool)
        kv = np.nan_to_num(g["kv_cache_usage_ratio"].to_numpy()) >= KV_BLOCKING
        pre = g["num_preemptions_total"].to_numpy()
        rising = np.concatenate([[False], np.nan_to_num(np.diff(pre)) > 0]) if len(pre) else np.zeros(0, bool)
        blocked = (free & (kv | rising)).astype(float)
        # cumulative blocked time at each sample instant, sample-and-hold between them
        cum = np.concatenate([[0.0], np.cumsum(blocked[:-1] * np.diff(ts))])

        def at(t: np.ndarray, ts=ts, cum=cum, blocked=blocked) -> np.ndarray:
            i = np.clip(np.searchsorted(ts, t, side="right") - 1, 0, len(ts) - 1)
            return np.where(t < ts[0], 0.0, cum[i] + blocked[i] * np.clip(t - ts[i], 0, None))

        a, b = t_from[sel], t_to[sel]
        span = (b - a).astype(float)
        i0 = np.clip(np.searchsorted(ts, a, side="right") - 1, 0, len(ts) - 1)
        state = np.where(a < ts[0], 0.0, blocked[i0])
        frac = np.where(span > 0, (at(b) - at(a)) / np.where(span > 0, span, 1), state)
        out[sel] = np.clip(frac, 0, 1)
    return out


SERIES_LEVELS = ("num_requests_running", "num_requests_waiting", "kv_cache_usage_ratio")
SERIES_COUNTERS = ("num_preemptions_total", "prompt_tokens_total", "generation_tokens_total")


def instance_series(samples: pa.Table) -> pd.DataFrame:
    """The engine series over time, one row per instance and sample instant, as read (no verdict).

    Columns: ``ts_ns``, ``instance``, the levels of :data:`SERIES_LEVELS` as sampled and, for
    each counter of :data:`SERIES_COUNTERS`, ``<name>_increase`` (its increase since the same
    instance's previous sample; a drop is a reset and the new value counts, as in
    :func:`counter_increase`) and ``<name>_per_s`` (that increase over the time since the previous
    sample). Both are null at an instance's first sample and wherever the counter is absent.
    Rows without any of these columns are left out.
    """
    cols = [*SERIES_LEVELS, *SERIES_COUNTERS]
    out_cols = ["ts_ns", "instance", *SERIES_LEVELS]
    for c in SERIES_COUNTERS:
        out_cols += [f"{c}_increase", f"{c}_per_s"]
    if samples.num_rows == 0:
        return pd.DataFrame(columns=out_cols)
    df = pd.DataFrame({c: f64(samples, c) for c in cols})
    df["ts_ns"] = samples.column("ts_ns").to_numpy().astype(np.int64)
    df["instance"] = samples.column("instance").to_pandas().fillna("").astype(str).to_numpy()
    df = df[df[cols].notna().any(axis=1)].sort_values(["instance", "ts_ns"], kind="stable", ignore_index=True)
    for c in SERIES_COUNTERS:
        inc = np.full(len(df), np.nan)
        rate = np.full(len(df), np.nan)
        for _, g in df[["instance", "ts_ns", c]].dropna().groupby("instance", sort=False):
            if len(g) < 2:
                continue
            v, ts = g[c].to_numpy(), g["ts_ns"].to_numpy()
            d = np.diff(v)
            step = np.where(d >= 0, d, v[1:])
            dt = np.diff(ts) / 1e9
            idx = g.index.to_numpy()[1:]
            inc[idx] = step
            with np.errstate(divide="ignore", invalid="ignore"):
                rate[idx] = np.where(dt > 0, step / dt, np.nan)
        df[f"{c}_increase"] = inc
        df[f"{c}_per_s"] = rate
    return df[out_cols]
