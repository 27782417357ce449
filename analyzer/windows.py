"""The per-window timeline: what held latency back in each time window of the run.

Two views of each window, from completed requests:

* stage time: each request's ns per stage (:func:`~bottleneck_map.analyzer.stages.request_stages`)
  is spread evenly over that stage's own interval (receive: arrival -> tokenize start; tokenize;
  queue: tokenized -> scheduled; prefill compute/wait: scheduled -> first token; requeue: each
  preempted -> resumed span on its own; recompute, decode compute/wait: first token ->
  finished; swap: scheduled -> finished; streaming: finished -> last byte), each window getting
  the part of the interval it overlaps, then summed per stage group (``STAGE_GROUPS``);
* class time: each request's attributed time per class is spread the same way over the stage
  interval where that class acts (tokenization: arrival -> tokenized; queueing: tokenized ->
  scheduled; prefill: scheduled -> first token; decode-side classes: scheduled -> finished;
  streaming: finished -> last byte); the window's verdict comes from it. A window no request
  time overlaps is ``idle``; unattributed time scales a window's confidences down as the run's.

Engine counters (KV usage, waiting, running, tokens) come from the steps in the window and
hardware means from the samples in it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bottleneck_map.analyzer.attribution import UNATTRIBUTED
from bottleneck_map.analyzer.classify import CONFIDENT, SHARE_THRESHOLD
from bottleneck_map.analyzer.result import CLASSES, IDLE, STAGE_GROUPS, WindowVerdict

_PLACE = {
    "tokenization": ("t0", "t2"),
    "queueing": ("t2", "t3"),
    "kv_cache_capacity": ("t2", "t5"),
    "prefill_compute": ("t3", "t4"),
    "decode_memory_bandwidth": ("t4", "t5"),
    "decode_compute": ("t4", "t5"),
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
    start, end); with it ``requeue`` is spread span by span, without it over scheduled ->
    finished. ``engine`` (:func:`~bottleneck_map.analyzer.engine_samples.engine_frame`)
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
    # Every column spread over its interval; the columns sharing an interval share one sort, and
    # one interval's sorted arrays are held at a time.
    columns: dict[tuple[str, str], list[tuple[str, np.ndarray]]] = {}
    for cls, (a, z) in _PLACE.items():
        if cls in attributed:
            columns.setdefault((a, z), []).append((cls, attributed[cls].to_numpy()))
    for stage, (a, z) in _STAGE_PLACE.items():
        if stage == "requeue" and preempted is not None and len(preempted[0]):
            req, p0, p1 = preempted
            keep = done[req]
            span = _Spread(p0[keep] - t0, p1[keep] - t0, window_ns, n_windows)
            df[STAGE_PREFIX + stage] = span.windows((p1[keep] - p0[keep]).astype(np.float64))
            continue
        columns.setdefault((a, z), []).append((STAGE_PREFIX + stage, stages[stage].to_numpy()))
    for (a, z), cols in columns.items():
        spread = _Spread(b[a][done] - t0, b[z][done] - t0, window_ns, n_windows)
        for name, v in cols:
            df[name] = spread.windows(v[done].astype(np.float64))
        del spread
    order = [c for c in _PLACE if c in attributed] + [STAGE_PREFIX + s for s in _STAGE_PLACE]
    df = df[[c for c in df.columns if c not in order] + order]
    if steps is not None and not steps.empty:
        ws = win(steps["start_ns"].to_numpy())
        for col in ("kv_usage", "num_waiting", "num_running"):
            if col in steps:
                df[col] = _window_mean(ws, steps[col].to_numpy(np.float64), n_windows)
        if "tokens_out" in steps:
            df["output_tokens_per_s"] = _window_sum(ws, steps["tokens_out"].to_numpy(np.float64), n_windows) / (
                window_ns / 1e9
            )
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


class _Spread:
    """Spreads values evenly over intervals [a, z) (ns from the run start) into ``n`` windows.

    A value v on [a, z) adds ``v * overlap / (z - a)`` to each window it overlaps; its cumulative
    amount up to time e is ``r * (max(e - a, 0) - max(e - z, 0))`` with ``r = v / (z - a)``, so the
    amount up to every window edge is two sorted prefix sums (``e * sum r - sum r * a`` over the
    starts before e, less the same over the ends). An empty interval puts its value in the window
    of a. Intervals are clipped to the windows, so the windows sum to the total; a window no
    interval overlaps gets exactly 0 (not the prefix sums' rounding).
    """

    def __init__(self, a: np.ndarray, z: np.ndarray, window_ns: int, n: int) -> None:
        self.a = np.clip(np.asarray(a, np.int64), 0, n * window_ns)
        self.z = np.clip(np.asarray(z, np.int64), self.a, n * window_ns)
        self.n, self.window_ns = n, window_ns
        self.point = self.z <= self.a
        self.point_win = np.clip(self.a[self.point] // window_ns, 0, n - 1)
        span = (self.z - self.a).astype(np.float64)
        # 1 / length of each interval (0 for an empty one, whose value goes to its window as a point)
        self.inv_span = np.divide(1.0, span, out=np.zeros_like(span), where=~self.point)
        del span
        self.oa, self.oz = np.argsort(self.a, kind="stable"), np.argsort(self.z, kind="stable")
        edges = np.arange(1, n + 1, dtype=np.int64) * window_ns
        self.edges = edges.astype(np.float64)
        a_sorted = self.a[self.oa]
        self.ka = np.searchsorted(a_sorted, edges, side="right")
        # Intervals overlapping window i: started before its end, not ended by its start (an empty
        # interval's value goes to its window separately).
        started = np.searchsorted(a_sorted, edges, side="left")
        del a_sorted
        z_sorted = self.z[self.oz]
        self.kz = np.searchsorted(z_sorted, edges, side="right")
        self.empty = started - np.searchsorted(z_sorted, edges - window_ns, side="right") <= 0

    def _upto(self, s: np.ndarray, order: np.ndarray, k: np.ndarray, r: np.ndarray) -> np.ndarray:
        ro = r[order]
        cr = np.concatenate([[0.0], np.cumsum(ro)])
        ro *= s[order]
        crs = np.concatenate([[0.0], np.cumsum(ro)])
        return self.edges * cr[k] - crs[k]

    def windows(self, v: np.ndarray) -> np.ndarray:
        v = np.nan_to_num(np.asarray(v, np.float64))
        out = np.zeros(self.n)
        if not len(v) or not v.any():  # a class or stage no request spent time in
            return out
        r = v * self.inv_span
        cum = self._upto(self.a, self.oa, self.ka, r) - self._upto(self.z, self.oz, self.kz, r)
        part = np.diff(np.concatenate([[0.0], cum]))
        # The prefix sums' rounding (a few ulps of their largest term) is not time.
        tol = 8 * np.finfo(np.float64).eps * self.edges[-1] * float(np.abs(r).sum())
        out += np.where(self.empty | (np.abs(part) <= tol), 0.0, part)
        out += np.bincount(self.point_win, weights=v[self.point], minlength=self.n)[: self.n]
        return out


def _window_sum(w: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """Per window, the sum of the values that are not NaN (0 where none)."""
    ok = ~np.isnan(v)
    return np.bincount(w[ok], weights=v[ok], minlength=n)[:n]


def _window_mean(w: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """Per window, the mean of the values that are not NaN (NaN where none)."""
    ok = ~np.isnan(v)
    count = np.bincount(w[ok], minlength=n)[:n]
    total = np.bincount(w[ok], weights=v[ok], minlength=n)[:n]
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def stage_group_shares(row: dict) -> dict[str, float]:
    """Stage-group shares of the stage time placed in one window (sum to 1, or all 0 when empty)."""
    group_ns = {
        g: sum(float(row.get(STAGE_PREFIX + s, 0.0) or 0.0) for s in members) for g, members in STAGE_GROUPS.items()
    }
    total = sum(group_ns.values())
    return {g: (v / total if total > 0 else 0.0) for g, v in group_ns.items()}


def _column(timeline: pd.DataFrame, col: str) -> np.ndarray:
    return timeline[col].to_numpy(np.float64, na_value=np.nan) if col in timeline else np.zeros(len(timeline))


def _window_scores(share: dict[str, np.ndarray], n: int) -> tuple[list[str], np.ndarray]:
    """Per window, :func:`~bottleneck_map.analyzer.classify.score_shares` of the shares (neutral
    corroboration): the classes (``SHARE_THRESHOLD`` order) and an (n, classes) array of scores."""
    names = list(SHARE_THRESHOLD)
    raw = np.empty((n, len(names)))
    for j, c in enumerate(names):
        # classify.confidence with corroboration 0.5, the same operations in the same order.
        strength = share.get(c, np.zeros(n)) / SHARE_THRESHOLD[c]
        low = 0.45 * strength * (0.5 + 0.5 * 0.5)
        high = np.minimum(1.0, 0.5 + 0.25 * np.minimum(strength - 1, 1.0) + 0.25 * 0.5)
        raw[:, j] = np.where(strength < 1, low, high)
    # Python's round (correctly rounded), as confidence() does, not numpy's scaled rounding.
    scores = np.array([round(v, 3) for v in raw.ravel().tolist()]).reshape(raw.shape)
    return names, scores


def window_verdicts(timeline: pd.DataFrame) -> list[WindowVerdict]:
    """One verdict per window (every window's shares and scores computed at once)."""
    n = len(timeline)
    classes = [c for c in CLASSES if c in timeline.columns]
    unattributed = _column(timeline, UNATTRIBUTED)
    total = np.zeros(n)
    vals = {c: timeline[c].to_numpy(np.float64) for c in classes}
    for v in vals.values():
        total = total + v
    total = total + unattributed
    pos = total > 0
    safe = np.where(pos, total, 1.0)
    share = {c: np.where(pos, v / safe, 0.0) for c, v in vals.items()}
    names, scores = _window_scores(share, n)
    # As for the run: latency nobody could attribute scales every confidence by the part seen.
    with np.errstate(divide="ignore", invalid="ignore"):
        seen = np.where(pos, 1 - unattributed / safe, 1.0)
    scores = np.round(scores * seen[:, None], 3)
    best_j = np.argmax(scores, axis=1) if n else np.zeros(0, np.int64)
    conf = scores[np.arange(n), best_j]
    group_ns = {g: np.zeros(n) for g in STAGE_GROUPS}
    for g, members in STAGE_GROUPS.items():
        for s in members:
            group_ns[g] = group_ns[g] + _column(timeline, STAGE_PREFIX + s)
    group_total = np.zeros(n)
    for v in group_ns.values():
        group_total = group_total + v
    gpos = group_total > 0
    gsafe = np.where(gpos, group_total, 1.0)
    stage_share = {g: np.where(gpos, v / gsafe, 0.0).tolist() for g, v in group_ns.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        unknown_share = (unattributed / total).tolist()
    has_unknown = (unattributed > 0).tolist()

    def opt(col: str) -> list[float | None]:
        if col not in timeline:
            return [None] * n
        return [None if v != v else v for v in timeline[col].to_numpy(np.float64, na_value=np.nan).tolist()]

    extra = {
        k: opt(col)
        for k, col in (
            ("kv_usage", "kv_usage"),
            ("num_waiting", "num_waiting"),
            ("num_running", "num_running"),
            ("output_tokens_per_s", "output_tokens_per_s"),
            ("gpu_util", "gpu_util_ratio"),
            ("sm_clock_ratio", "sm_clock_ratio"),
        )
    }
    share_l = {c: v.tolist() for c, v in share.items()}
    scores_l = scores.tolist()
    best_l, conf_l = best_j.tolist(), conf.tolist()
    start_s, end_s = timeline["start_s"].to_numpy(np.float64).tolist(), timeline["end_s"].to_numpy(np.float64).tolist()
    arrived = timeline["requests_arrived"].to_numpy().tolist()
    finished = timeline["requests_finished"].to_numpy().tolist()
    out = []
    seen_l = seen.tolist()
    idle_l = (~pos & ~gpos).tolist()
    for i in range(n):
        c = conf_l[i]
        cls = names[best_l[i]] if c >= CONFIDENT else "balanced"
        score = c if cls != "balanced" else round((1 - c) * seen_l[i], 3)
        if idle_l[i]:  # no request time in the window: nothing to judge, a measured fact
            cls, score = IDLE, 1.0
        class_share = {k: share_l[k][i] for k in classes}
        if has_unknown[i]:
            class_share[UNATTRIBUTED] = unknown_share[i]
        out.append(
            WindowVerdict(
                index=i,
                start_s=start_s[i],
                end_s=end_s[i],
                cls=cls,
                score=score,
                confidence=score,
                requests_arrived=int(arrived[i]),
                requests_finished=int(finished[i]),
                stage_share={g: v[i] for g, v in stage_share.items()},
                class_share=class_share,
                scores=dict(zip(names, scores_l[i], strict=True)),
                **{k: v[i] for k, v in extra.items()},
            )
        )
    return out
