"""Attribute every nanosecond of every request's latency to one bottleneck class.

Stage time maps to classes as follows (``docs/bottleneck-map.md`` has the table):

* ``receive`` + ``tokenize`` -> tokenization, except an ingested request's ``receive`` when it is
  the front end's hand-off to the engine (``frontend_ns``: no tokenize stamps, a queued stamp)
  -> host_overhead; ``streaming`` -> streaming;
* ``queue`` -> kv_cache_capacity for the part of the wait during which the engine had a free
  batch slot and token budget while KV usage was at or above
  :data:`KV_BLOCKING` (or sequences were preempted/swapped, or as many were running as the cache
  holds at the run's mean request length), queueing for the rest;
* ``requeue`` and ``recompute`` -> kv_cache_capacity; ``swap`` -> pcie_transfer;
* time in this request's own steps splits by what the step did: host work
  (schedule/prepare/sample/postprocess) -> host_overhead, forward time lost to clock
  throttling -> power_thermal, prefill forward -> prefill_compute, decode forward ->
  decode_memory_bandwidth (decode_compute when the step's decode rows sit above the ridge
  point, so the roofline bounds them by FLOP/s), except the part of a mixed step that its prefill tokens add
  (modelled with the roofline) -> prefill_compute; the forward time of a step that runs at
  under :data:`~bottleneck_map.analyzer.roofline.ROOF_NEAR` of its roofline speed (near neither
  the bandwidth nor the compute roof) -> host_overhead (framework / launch overhead, matrices
  too small for the hardware);
* waiting inside prefill/decode: idle gaps with no step running -> host_overhead,
  other sequences' steps -> the classes of what those steps did (same split).

Everything uses cumulative per-class step time on the run's timeline, so a request's
share of any interval is two ``np.interp`` calls.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from bottleneck_map.analyzer.data import f64, ns
from bottleneck_map.analyzer.result import CLASSES, STAGES
from bottleneck_map.analyzer.roofline import ROOF_NEAR

# KV usage at or above this fraction (of blocks) counts as "KV cache full".
KV_FULL = 0.95
# Requests waiting although a batch slot and token budget are free can only be held back by KV blocks
# (the remaining admission constraint); this much KV usage confirms it.
KV_BLOCKING = 0.50
# A step using this fraction of --max-num-batched-tokens has spent its token budget.
BUDGET_FULL = 0.9
UNATTRIBUTED = "unattributed"
_STEP_CLASSES = (
    "host_overhead",
    "pcie_transfer",
    "power_thermal",
    "prefill_compute",
    "decode_memory_bandwidth",
    "decode_compute",
)
_DECODE = ("decode_memory_bandwidth", "decode_compute")


def step_breakdown(
    steps: pa.Table,
    meta_engine: dict | None,
    throttle_loss: np.ndarray | None = None,
    prefill_time_frac: np.ndarray | None = None,
    model_time_ns: np.ndarray | None = None,
    decode_compute_bound: np.ndarray | None = None,
    kv_request_capacity: float | None = None,
) -> pd.DataFrame:
    """Per step: duration split into class time (ns, floats), plus ``kv_usage`` and flags.

    ``decode_compute_bound`` (per step, from the roofline) sends the decode part of a step's
    forward time to decode_compute instead of decode_memory_bandwidth. ``kv_request_capacity``
    (:func:`kv_request_capacity`): how many requests of the run's mean length the KV cache holds;
    a step running that many with requests waiting is held by KV blocks, whatever its usage."""
    n = steps.num_rows
    start, end = ns(steps, "start_ns"), ns(steps, "end_ns")
    dur = np.clip(end - start, 0, None).astype(np.float64)
    host = np.zeros(n)
    for c in ("schedule_ns", "prepare_ns", "sample_ns", "postprocess_ns"):
        host += np.nan_to_num(f64(steps, c))
    swap = np.nan_to_num(f64(steps, "swap_ns"))
    host = np.minimum(host, dur)
    swap = np.minimum(swap, dur - host)
    fwd = dur - host - swap
    over = np.zeros(n)
    if model_time_ns is not None:
        # A forward pass at under ROOF_NEAR of its roofline speed is bound by neither bandwidth nor
        # compute: all of it is framework / launch overhead or small-matrix inefficiency.
        off_roof = np.isfinite(model_time_ns) & (fwd > 0) & (model_time_ns < ROOF_NEAR * fwd)
        over = np.where(off_roof, fwd, 0.0)
        fwd = fwd - over
        host = host + over
    loss = np.zeros(n) if throttle_loss is None else np.clip(np.nan_to_num(throttle_loss), 0, 1) * fwd
    dcb = np.zeros(n, bool) if decode_compute_bound is None else np.asarray(decode_compute_bound, bool)
    fwd_eff = fwd - loss
    pre_tok = np.nan_to_num(f64(steps, "num_prefill_tokens"))
    dec = np.nan_to_num(f64(steps, "num_decode_seqs"))
    tot = pre_tok + dec
    pfrac = np.where(tot > 0, pre_tok / np.where(tot > 0, tot, 1), 0.0)
    if prefill_time_frac is not None:
        # Modelled from the roofline: the share of the step's time its prefill tokens add.
        pfrac = np.where(np.isfinite(prefill_time_frac), prefill_time_frac, pfrac)
    used, free = f64(steps, "kv_blocks_used"), f64(steps, "kv_blocks_free")
    total_blocks = used + free
    eng_blocks = (meta_engine or {}).get("num_kv_blocks")
    if eng_blocks:
        total_blocks = np.where(np.isfinite(total_blocks) & (total_blocks > 0), total_blocks, float(eng_blocks))
    with np.errstate(divide="ignore", invalid="ignore"):
        kv = np.where(total_blocks > 0, used / total_blocks, np.nan)
    waiting = f64(steps, "num_waiting")
    out = pd.DataFrame(
        {
            "start_ns": start,
            "end_ns": end,
            "dur": dur,
            "host_overhead": host,
            "pcie_transfer": swap,
            "power_thermal": loss,
            "prefill_compute": fwd_eff * pfrac,
            "decode_memory_bandwidth": fwd_eff * (1 - pfrac) * ~dcb,
            "decode_compute": fwd_eff * (1 - pfrac) * dcb,
            "prefill_frac": pfrac,
            "forward_overhead": over,
            "kv_usage": kv,
            "num_waiting": waiting,
            "num_running": f64(steps, "num_running"),
        },
        copy=False,
    )
    # Admission blocked by KV blocks: requests wait although a batch slot and token budget are
    # free, while the cache is nearly full or sequences are preempted/swapped out.
    running = f64(steps, "num_running")
    slots_full = np.zeros(n, bool)
    mns = (meta_engine or {}).get("max_num_seqs")
    if mns:
        slots_full = np.nan_to_num(running) >= mns
    budget_full = np.zeros(n, bool)
    mnbt = (meta_engine or {}).get("max_num_batched_tokens")
    if mnbt:
        budget_full = tot >= BUDGET_FULL * mnbt
    pressure = (
        (np.nan_to_num(kv) >= KV_BLOCKING)
        | (np.nan_to_num(f64(steps, "num_swapped")) > 0)
        | (np.nan_to_num(f64(steps, "num_preempted")) > 0)
    )
    # The cache holds this many requests at their full length: with that many running, the next
    # waits for blocks (or is admitted and preempted later) even while usage is below KV_BLOCKING.
    at_capacity = np.zeros(n, bool)
    if kv_request_capacity:
        at_capacity = np.nan_to_num(running) >= max(1.0, np.floor(kv_request_capacity))
    pressure |= at_capacity
    out["kv_at_capacity"] = at_capacity
    out["slots_full"] = slots_full
    out["budget_full"] = budget_full
    # What a request waiting in this step waits for: KV blocks when neither a batch slot nor the
    # token budget is what is missing. A request's own queue interval proves that it waits, so the
    # queue split reads this; ``kv_blocked`` also needs the step's own count of waiting requests.
    out["kv_bound"] = ~slots_full & ~budget_full & pressure
    out["kv_blocked"] = (np.nan_to_num(waiting) > 0) & out["kv_bound"].to_numpy()
    return out


def kv_request_capacity(
    meta_engine: dict | None, mean_prompt_tokens: float | None, mean_output_tokens: float | None
) -> float | None:
    """How many requests of the run's mean length (prompt + output tokens) the KV cache holds:
    ``num_kv_blocks x block_size / (prompt + output)``; None when the cache size is unknown."""
    e = meta_engine or {}
    blocks, size = e.get("num_kv_blocks"), e.get("block_size")
    ctx = (mean_prompt_tokens or 0.0) + (mean_output_tokens or 0.0)
    try:
        cap = float(blocks) * float(size) / ctx if blocks and size and ctx > 0 else None
    except (TypeError, ValueError):
        return None
    return cap if cap is not None and np.isfinite(cap) and cap > 0 else None


class Timeline:
    """Cumulative step time per class along the run, evaluated at arbitrary times."""

    def __init__(self, sb: pd.DataFrame) -> None:
        order = np.argsort(sb["start_ns"].to_numpy(), kind="stable")
        s = sb["start_ns"].to_numpy()[order]
        e = np.maximum(sb["end_ns"].to_numpy()[order], s)
        x = np.empty(2 * len(s), np.int64)
        x[0::2], x[1::2] = s, e
        self.xi = np.maximum.accumulate(x) if len(x) else x  # int64: searched with int64 times, no casts
        self.x = self.xi.astype(np.float64)
        self.cum: dict[str, np.ndarray] = {}
        for col in ("dur", *_STEP_CLASSES):
            self.cum[col] = self._cum(sb[col].to_numpy()[order])
        self.cum["kv_bound"] = self._cum((sb["dur"] * sb["kv_bound"]).to_numpy()[order])

    def _cum(self, v: np.ndarray) -> np.ndarray:
        y = np.empty(2 * len(v))
        c = np.cumsum(v)
        y[1::2] = c
        y[0::2] = c - v
        return y

    def at(self, t: np.ndarray, cols: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """The cumulative columns (all, or ``cols``) at times ``t`` (one search, linear interpolation)."""
        keys = tuple(self.cum) if cols is None else cols
        if not len(self.x):
            return {k: np.zeros(len(t)) for k in keys}
        x = self.x
        i = (
            np.clip(np.searchsorted(self.xi if t.dtype == np.int64 else x, t, side="right") - 1, 0, len(x) - 2)
            if len(x) > 1
            else np.zeros(len(t), np.int64)
        )
        i1 = np.minimum(i + 1, len(x) - 1)
        x0 = x[i]
        span = x[i1] - x0
        f = np.where(span > 0, np.clip((t - x0) / np.where(span > 0, span, 1), 0, 1), 1.0)
        # Before the first step: i = 0 and f = 0 give every column's first point, 0.
        f[t < x[0]] = 0.0
        out = {}
        for k in keys:
            y = self.cum[k]
            v = y[i]
            v += f * (y[i1] - v)  # the rise to the next point (none after the last)
            out[k] = v
        return out

    def between(self, col: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.clip(self.at(b)[col] - self.at(a)[col], 0, None)


# Requests attributed at a time (bounds the temporaries: a few dozen float arrays of this length).
ATTRIBUTE_ROWS = 65_536


def attribute(
    stages: pd.DataFrame, own: pd.DataFrame | None, sb: pd.DataFrame | None, rows: int = ATTRIBUTE_ROWS
) -> pd.DataFrame:
    """Per request ns per class (columns = CLASSES without balanced, plus ``unattributed``).

    ``own`` optionally holds the exact per-request own-step time per step class (from
    :func:`own_step_time`, one pass over the exploded steps); without it the class make-up of the
    steps in the request's prefill and decode intervals is used (a running sequence is in every
    step of its interval). ``sb`` is :func:`step_breakdown`. Without steps, prefill and decode
    time is unattributed. Requests are attributed ``rows`` at a time (each one on its own).
    """
    n = len(stages)
    cols = [c for c in CLASSES if c != "balanced"] + [UNATTRIBUTED]
    tl = Timeline(sb) if sb is not None and not sb.empty else None
    if tl is None or n < 2:
        if n <= rows:
            return _attribute(stages, own, sb, tl)
        order = None
    else:
        # Requests are attributed in order of their tokenized time (each on its own, so the order
        # does not change any result): the timeline searches and look-ups then walk the timeline
        # forward instead of jumping around it (about half the CPU of the searches).
        t2 = stages["arrival_ns"].to_numpy() + (stages["receive"].to_numpy() + stages["tokenize"].to_numpy())
        order = np.argsort(t2)
        del t2
        if n < 2**31:  # held through the loop: half the memory
            order = order.astype(np.int32)
    out = {c: np.empty(n) for c in cols}
    for a in range(0, n, rows):
        if order is None:
            part = _attribute(stages.iloc[a : a + rows], None if own is None else own.iloc[a : a + rows], sb, tl)
            at: slice | np.ndarray = slice(a, a + len(part))
        else:
            at = order[a : a + rows].astype(np.intp)
            sub = pd.DataFrame({c: stages[c].to_numpy()[at] for c in _STAGE_COLUMNS if c in stages}, copy=False)
            part = _attribute(sub, None if own is None else own.iloc[at], sb, tl)
            del sub
        for c in cols:
            out[c][at] = part[c].to_numpy()
        del part
    return pd.DataFrame(out, index=stages.index, copy=False)


# The stage columns _attribute reads.
_STAGE_COLUMNS = (*STAGES, "arrival_ns", "first_token_ns", "end_ns", "frontend_ns")


def _attribute(  # noqa: C901
    stages: pd.DataFrame, own: pd.DataFrame | None, sb: pd.DataFrame | None, tl: Timeline | None
) -> pd.DataFrame:
    n = len(stages)
    cols = [c for c in CLASSES if c != "balanced"] + [UNATTRIBUTED]
    st = {c: stages[c].to_numpy() for c in _STAGE_COLUMNS if c in stages}
    out = {c: np.zeros(n) for c in cols}
    # An ingested request's receive stage is the front end's hand-off to the engine (IPC, pick-up
    # between steps): host overhead; otherwise it is the wait for a tokenizer.
    frontend = st["frontend_ns"].astype(float) if "frontend_ns" in st else np.zeros(n)
    out["tokenization"] = (st["receive"] + st["tokenize"]).astype(float) - frontend
    out["host_overhead"] += frontend
    out["streaming"] = st["streaming"].astype(float)
    out["kv_cache_capacity"] = (st["requeue"] + st["recompute"]).astype(float)
    out["pcie_transfer"] = st["swap"].astype(float)
    queue = st["queue"].astype(float)

    def frame() -> pd.DataFrame:
        return pd.DataFrame({c: out[c] for c in cols}, index=stages.index, copy=False)

    if sb is None or sb.empty or n == 0:
        out["queueing"] = queue
        out[UNATTRIBUTED] = (
            st["prefill_compute"] + st["prefill_wait"] + st["decode_compute"] + st["decode_wait"]
        ).astype(float)
        return frame()
    t2 = st["arrival_ns"] + (st["receive"] + st["tokenize"])
    t3 = t2 + st["queue"]
    t4 = st["first_token_ns"]
    t5 = st["end_ns"] - st["streaming"]
    # Each bound gets the cumulative columns its intervals need.
    classes = ("dur", *_STEP_CLASSES)
    at = {"t2": tl.at(t2, ("dur", "kv_bound")), "t3": tl.at(t3, (*classes, "kv_bound"))}
    at.update(t4=tl.at(t4, classes), t5=tl.at(t5, classes))

    def between(col: str, a: str, b: str) -> np.ndarray:
        return np.clip(at[b][col] - at[a][col], 0, None)

    busy_q = between("dur", "t2", "t3")
    kvb = between("kv_bound", "t2", "t3")
    kv_frac = np.where(busy_q > 0, kvb / np.where(busy_q > 0, busy_q, 1), 0.0)
    out["kv_cache_capacity"] += queue * kv_frac
    out["queueing"] = queue * (1 - kv_frac)
    # Own steps: split the stage's own compute by the class make-up of the steps in its interval
    # (a running sequence is in every step of its interval; swap is its own stage already).
    if own is not None:
        own_cols = [c for c in _STEP_CLASSES if c != "pcie_transfer"]
        own_total = own[own_cols].sum(axis=1).to_numpy()
        own_stage = (st["prefill_compute"] + st["decode_compute"]).astype(float)
        scale = np.where(own_total > 0, own_stage / np.where(own_total > 0, own_total, 1), 0.0)
        for c in own_cols:
            out[c] += own[c].to_numpy() * scale
    else:
        for (a, b), own_t, phase in (
            (("t3", "t4"), st["prefill_compute"], "prefill"),
            (("t4", "t5"), st["decode_compute"], "decode"),
        ):
            own_t = own_t.astype(float)
            parts = {c: between(c, a, b) for c in _STEP_CLASSES if c != "pcie_transfer"}
            if phase == "prefill":  # in its own prefill steps a request's forward time is prefill compute
                for c in _DECODE:
                    parts["prefill_compute"] = parts["prefill_compute"] + parts.pop(c)
            tot = sum(parts.values())
            for c, v in parts.items():
                out[c] += np.where(tot > 0, own_t * v / np.where(tot > 0, tot, 1), 0.0)
            fallback = "prefill_compute" if phase == "prefill" else "decode_memory_bandwidth"
            out[fallback] += np.where(tot > 0, 0.0, own_t)
    # Waiting: idle gaps -> host overhead; other sequences' steps -> their classes.
    bound = {"t3": t3, "t4": t4, "t5": t5}
    for (a, b), wait in ((("t3", "t4"), st["prefill_wait"]), (("t4", "t5"), st["decode_wait"])):
        wait = wait.astype(float)
        span = np.clip(bound[b] - bound[a], 0, None).astype(float)
        busy = np.minimum(between("dur", a, b), span)
        gap = np.minimum(wait, span - busy)
        rest = wait - gap
        out["host_overhead"] += gap
        parts = {c: between(c, a, b) for c in _STEP_CLASSES}
        tot = sum(parts.values())
        for c, v in parts.items():
            out[c] += np.where(tot > 0, rest * v / np.where(tot > 0, tot, 1), 0.0)
        out["host_overhead"] += np.where(tot > 0, 0.0, rest)
    return frame()


def own_step_time(membership, sb: pd.DataFrame, n_requests: int, first_token_ns: np.ndarray) -> pd.DataFrame:
    """Per request, the class make-up of the steps it was in (prefill and decode phase, recompute excluded)."""
    mem = membership.known()
    req, st = mem.req, mem.step
    prefill_phase = sb["start_ns"].to_numpy()[st] < first_token_ns[req]
    keep = ~(~prefill_phase & mem.is_prefill)
    w = keep.astype(np.float64)
    out = {}
    fwd_step = sb["prefill_compute"].to_numpy() + sum(sb[c].to_numpy() for c in _DECODE if c in sb)
    fwd = fwd_step[st] * w
    pre_w = prefill_phase * w
    # In its own prefill steps a request's forward time is prefill compute, whatever else was batched.
    out["prefill_compute"] = np.bincount(
        req, weights=fwd * prefill_phase + sb["prefill_compute"].to_numpy()[st] * (w - pre_w), minlength=n_requests
    )
    for c in _DECODE:
        col = sb[c].to_numpy() if c in sb else np.zeros(len(sb))
        out[c] = np.bincount(req, weights=col[st] * (w - pre_w), minlength=n_requests)
    for c in ("host_overhead", "pcie_transfer", "power_thermal"):
        col = sb[c].to_numpy()
        out[c] = np.bincount(req, weights=col[st] * w, minlength=n_requests) if col.any() else np.zeros(n_requests)
    return pd.DataFrame(out)


def request_label(ns_by_class: dict[str, float], e2e_ns: float) -> tuple[str | None, str]:
    """A request's class: the one holding most of its own time, and a sentence with the numbers.

    Unattributed time competes like a class: when it holds the most, the label is None (the
    request's time cannot be judged) and the sentence names the largest attributed class."""
    total = max(float(e2e_ns), 1.0)
    ranked = sorted(((float(v), c) for c, v in ns_by_class.items() if v > 0), reverse=True)
    if not ranked:
        return None, "no attributed time"
    ns, cls = ranked[0]
    if cls != UNATTRIBUTED:
        return cls, f"{cls}: {ns / 1e9:.3f} s of {total / 1e9:.3f} s ({100 * ns / total:.0f}%)"
    why = f"unattributed: {ns / 1e9:.3f} s of {total / 1e9:.3f} s ({100 * ns / total:.0f}%) cannot be judged"
    if len(ranked) > 1:
        why += f"; largest attributed class {ranked[1][1]} ({100 * ranked[1][0] / total:.0f}%)"
    return None, why
