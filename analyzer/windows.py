"""The per-window timeline: what held latency back in each time window of the run.

Two views of each window, from completed requests:

* stage time: each request's ns per stage (:func:`~bottleneck_map.analyzer.stages.request_stages`)
  is placed in the window holding the midpoint of that stage's own interval (receive:
  arrival -> tokenize start; tokenize; queue: tokenized -> scheduled; prefill compute/wait:
  scheduled -> first token; requeue: each preempted -> resumed span on its own; recompute,
  decode compute/wait: first token -> finished; swap: scheduled -> finished; streaming:
  finished -> last byte), then summed per stage group (``STAGE_GROUPS``);
* class time: each request's attributed time per class is placed in the window holding the
  midpoint of the stage interval where that class acts (tokenization: arrival -> tokenized;
  queueing: tokenized -> scheduled; prefill: scheduled -> first token; decode-side classes:
  scheduled -> finished; streaming: finished -> last byte); the window's verdict comes from it.

Engine counters (KV usage, waiting, running, tokens) come from the steps in the window and
hardware means from the samples in it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bottleneck_map.analyzer.attribution import UNATTRIBUTED
from bottleneck_map.analyzer.classify import CONFIDENT, score_shares
from bottleneck_map.analyzer.result import CLASSES, STAGE_GROUPS, WindowVerdict

_PLACE = {
    "tokenization": ("t0", "t2"),
    "queueing": ("t2", "t3"),
    "kv_cache_capacity": ("t2", "t5"),
    "prefill_compute": ("t3", "t4"),
    "decode_memory_bandwidth": ("t4", "t5"),
    "pcie_transfer": ("t3", "t5"),
    "host_overhead": ("t3", "t5"),
    "power_thermal": ("t3", "t5"),
    "streaming": ("t5", "t6"),
    UNATTRIBUTED: ("t3", "t5"),
}
# Each stage's own interval (requeue is placed span by span when the spans are known).
_STAGE_PLACE = {
    "receive": ("t0", "t1"),
    "tokenize": ("t1", "t2"),
    "queue": ("t2", "t3"),
    "prefill_compute": ("t3", "t4"),
    "prefill_wait": ("t3", "t4"),
    "requeue": ("t3", "t5"),
    "recompute": ("t4", "t5"),
    "swap": ("t3", "t5"),
    "decode_compute": ("t4", "t5"),
    "decode_wait": ("t4", "t5"),
    "streaming": ("t5", "t6"),
}
STAGE_PREFIX = "stage:"


def bounds(stages: pd.DataFrame) -> dict[str, np.ndarray]:
    t0 = stages["arrival_ns"].to_numpy()
    t2 = t0 + (stages["receive"] + stages["tokenize"]).to_numpy()
    t3 = t2 + stages["queue"].to_numpy()
    t6 = stages["end_ns"].to_numpy()
    t5 = t6 - stages["streaming"].to_numpy()
    t1 = t0 + stages["receive"].to_numpy()
    return {"t0": t0, "t1": t1, "t2": t2, "t3": t3, "t4": stages["first_token_ns"].to_numpy(), "t5": t5, "t6": t6}


def window_timeline(
    stages: pd.DataFrame,
    attributed: pd.DataFrame,
    steps: pd.DataFrame | None,
    hw_windows: pd.DataFrame | None,
    t0: int,
    window_ns: int,
    n_windows: int,
    preempted: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    engine: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per window: bounds, arrivals, completions, ns per class, ns per stage, engine and hardware means.

    Class columns are named after the class; stage columns are ``"stage:<stage>"``.
    ``preempted`` is :func:`~bottleneck_map.analyzer.stages.preempted_spans` (request row,
    start, end); with it ``requeue`` is placed span by span, without it at the midpoint of
    scheduled -> finished. ``engine`` (:func:`~bottleneck_map.analyzer.engine_samples.engine_frame`)
    gives KV usage, waiting and running for bundles without steps: per window each instance's
    mean, KV usage averaged over instances, waiting and running summed.
    """
    idx = pd.RangeIndex(n_windows)
    df = pd.DataFrame(index=idx)
    df["start_s"] = idx * window_ns / 1e9
    df["end_s"] = (idx + 1) * window_ns / 1e9

    def win(t: np.ndarray) -> np.ndarray:
        return np.clip((t - t0) // window_ns, 0, n_windows - 1)

    b = bounds(stages)
    df["requests_arrived"] = np.bincount(win(b["t0"]), minlength=n_windows)[:n_windows]
    done = stages["complete"].to_numpy()
    df["requests_finished"] = np.bincount(win(b["t6"][done]), minlength=n_windows)[:n_windows]
    for cls, (a, z) in _PLACE.items():
        if cls not in attributed:
            continue
        w = win((b[a] + b[z]) // 2)
        df[cls] = np.bincount(w[done], weights=attributed[cls].to_numpy()[done], minlength=n_windows)[:n_windows]
    for stage, (a, z) in _STAGE_PLACE.items():
        if stage == "requeue" and preempted is not None and len(preempted[0]):
            req, p0, p1 = preempted
            keep = done[req]
            w = win((p0[keep] + p1[keep]) // 2)
            df[STAGE_PREFIX + stage] = np.bincount(
                w, weights=(p1[keep] - p0[keep]).astype(np.float64), minlength=n_windows
            )[:n_windows]
            continue
        w = win((b[a] + b[z]) // 2)
        vals = stages[stage].to_numpy().astype(np.float64)
        df[STAGE_PREFIX + stage] = np.bincount(w[done], weights=vals[done], minlength=n_windows)[:n_windows]
    if steps is not None and not steps.empty:
        ws = win(steps["start_ns"].to_numpy())
        g = steps.assign(window=ws).groupby("window")
        for col in ("kv_usage", "num_waiting", "num_running"):
            if col in steps:
                df[col] = g[col].mean().reindex(idx)
        if "tokens_out" in steps:
            df["output_tokens_per_s"] = g["tokens_out"].sum().reindex(idx).fillna(0) / (window_ns / 1e9)
    elif engine is not None and not engine.empty:
        per_inst = (
            engine.assign(window=win(engine["ts_ns"].to_numpy()))
            .groupby(["window", "instance"])[["kv_cache_usage_ratio", "num_requests_waiting", "num_requests_running"]]
            .mean()
            .groupby(level="window")
        )
        df["kv_usage"] = per_inst["kv_cache_usage_ratio"].mean().reindex(idx)
        df["num_waiting"] = per_inst["num_requests_waiting"].sum(min_count=1).reindex(idx)
        df["num_running"] = per_inst["num_requests_running"].sum(min_count=1).reindex(idx)
    if hw_windows is not None and not hw_windows.empty:
        for col in ("gpu_util_ratio", "sm_clock_ratio", "throttled", "gpm_dram_bw_util_ratio", "proc_cpu_ratio"):
            if col in hw_windows:
                df[col] = hw_windows[col].to_numpy()[:n_windows]
    return df


def _opt(row: dict, col: str) -> float | None:
    v = row.get(col)
    return None if v is None or pd.isna(v) else float(v)


def stage_group_shares(row: dict) -> dict[str, float]:
    """Stage-group shares of the stage time placed in one window (sum to 1, or all 0 when empty)."""
    group_ns = {
        g: sum(float(row.get(STAGE_PREFIX + s, 0.0) or 0.0) for s in members) for g, members in STAGE_GROUPS.items()
    }
    total = sum(group_ns.values())
    return {g: (v / total if total > 0 else 0.0) for g, v in group_ns.items()}


def window_verdicts(timeline: pd.DataFrame) -> list[WindowVerdict]:
    classes = [c for c in CLASSES if c in timeline.columns]
    out = []
    for i, row in enumerate(timeline.to_dict("records")):
        vals = {c: float(row[c]) for c in classes}
        unattributed = float(row.get(UNATTRIBUTED, 0.0) or 0.0)
        total = sum(vals.values()) + unattributed
        share = {c: (v / total if total > 0 else 0.0) for c, v in vals.items()}
        scores = score_shares(share)
        best = max(scores, key=scores.get) if scores else "balanced"
        conf = scores.get(best, 0.0)
        cls = best if conf >= CONFIDENT else "balanced"
        class_share = dict(share)
        if unattributed > 0:
            class_share[UNATTRIBUTED] = unattributed / total

        out.append(
            WindowVerdict(
                index=int(i),
                start_s=float(row["start_s"]),
                end_s=float(row["end_s"]),
                cls=cls,
                score=conf if cls != "balanced" else round(1 - conf, 3),
                confidence=conf if cls != "balanced" else round(1 - conf, 3),
                requests_arrived=int(row["requests_arrived"]),
                requests_finished=int(row["requests_finished"]),
                stage_share=stage_group_shares(row),
                class_share=class_share,
                scores=scores,
                kv_usage=_opt(row, "kv_usage"),
                num_waiting=_opt(row, "num_waiting"),
                num_running=_opt(row, "num_running"),
                output_tokens_per_s=_opt(row, "output_tokens_per_s"),
                gpu_util=_opt(row, "gpu_util_ratio"),
                sm_clock_ratio=_opt(row, "sm_clock_ratio"),
            )
        )
    return out
