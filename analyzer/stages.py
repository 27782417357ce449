"""Per-request stage decomposition: where each request's end-to-end latency went.

For every request the stages of :data:`~bottleneck_map.analyzer.result.STAGES` are
computed in int64 ns and add up exactly to E2E (arrival to last byte, or to
``finished`` when nothing was streamed):

* ``receive``: arrival -> tokenize_start; ``tokenize``: tokenize_start -> tokenize_end;
* ``queue``: tokenize_end -> first_scheduled;
* prefill (first_scheduled -> first_token) = ``prefill_compute`` (durations of the steps
  that carried this request's prompt, swap time excluded) + ``requeue`` (preempted ->
  resumed inside it) + ``swap`` (swap time of those steps) + ``prefill_wait`` (the rest:
  other sequences' steps and gaps between steps);
* decode (first_token -> finished) = ``decode_compute`` + ``recompute`` (prefill steps
  re-run after a recompute preemption) + ``swap`` + ``requeue`` + ``decode_wait``;
* ``streaming``: finished -> last byte delivered.

A step carries many requests; each request is charged the full duration of the
steps it was in (that is the latency it experienced), so shares across requests
are shares of summed E2E, not of wall time. Steps are exploded once and joined
by request id; everything is vectorised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bottleneck_map.analyzer.data import NA_NS, flat_list, flat_values, ns, to_np, workload_classes
from bottleneck_map.analyzer.result import STAGES


def _fill(a: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    return np.where(a == NA_NS, fallback, a)


def _overlap(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> np.ndarray:
    return np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None)


def lifecycle(requests: pa.Table) -> pd.DataFrame:
    """Boundary times t0..t6 of each request (monotone, nulls filled from the previous stamp)."""
    t0 = ns(requests, "arrival_ns")
    fin = ns(requests, "finished_ns")
    # Without tokenize stamps, a queued stamp (an ingested vLLM span: the engine core queued the
    # request) ends "receive": the front end's hand-off to the engine, apart from the engine's queue.
    queued = ns(requests, "queued_ns") if "queued_ns" in requests.column_names else np.full(len(t0), NA_NS)
    tok_start = ns(requests, "tokenize_start_ns")
    t1 = _fill(tok_start, _fill(np.where(tok_start == NA_NS, queued, NA_NS), t0))
    t2 = _fill(ns(requests, "tokenize_end_ns"), t1)
    ft = ns(requests, "first_token_ns")
    t3 = _fill(ns(requests, "first_scheduled_ns"), _fill(ft, _fill(fin, t2)))
    t4 = _fill(ft, _fill(fin, t3))
    t5 = _fill(fin, t4)
    t6 = _fill(ns(requests, "last_byte_ns"), t5)
    m = [t0, t1, t2, t3, t4, t5, t6]
    for i in range(1, 7):  # running maximum, in place
        np.maximum(m[i], m[i - 1], out=m[i])
    out = pd.DataFrame({f"t{i}": m[i] for i in range(7)}, copy=False)
    out["complete"] = fin != NA_NS
    out["frontend"] = (tok_start == NA_NS) & (queued != NA_NS)  # receive is the front-end hand-off
    return out


def preempted_spans(requests: pa.Table, t: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every preempted -> resumed span: (request row index, start ns, end ns).

    The i-th preemption of a request pairs with its i-th resume; a missing resume (or one
    before its preemption) means "until the request finished" (``t5``). Spans are clipped
    to first_scheduled -> finished (``t3``..``t5``); null preemption stamps are left out.
    """
    pre, parent = flat_list(requests, "preempted_ns")
    res, rparent = flat_list(requests, "resumed_ns")
    if not len(parent):
        e = np.empty(0, np.int64)
        return e, e, e
    p = to_np(pre, NA_NS, np.int64)
    rank = np.arange(len(parent)) - np.searchsorted(parent, parent)
    r_vals = to_np(res, NA_NS, np.int64) if len(rparent) else np.empty(0, np.int64)
    r_rank = np.arange(len(rparent)) - np.searchsorted(rparent, rparent) if len(rparent) else rparent
    r = np.full(len(parent), NA_NS, np.int64)
    if len(rparent):
        key_p = parent * 1_000_003 + rank
        key_r = rparent * 1_000_003 + r_rank
        idx = pd.Index(key_r).get_indexer(key_p)
        hit = idx >= 0
        r[hit] = r_vals[idx[hit]]
    t3, t5 = np.asarray(t["t3"])[parent], np.asarray(t["t5"])[parent]
    r = np.where((r == NA_NS) | (r < p), t5, r)
    valid = p != NA_NS
    start = np.clip(p[valid], t3[valid], t5[valid])
    end = np.clip(r[valid], start, t5[valid])
    return parent[valid], start, end


def _preemption_overlaps(requests: pa.Table, t: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Preempted time inside prefill and inside decode, and the preemption count, per request."""
    n = requests.num_rows
    _, parent = flat_list(requests, "preempted_ns")
    count = np.bincount(parent, minlength=n) if len(parent) else np.zeros(n, np.int64)
    req, a, b = preempted_spans(requests, t)
    if not len(req):
        return np.zeros(n, np.int64), np.zeros(n, np.int64), count
    t3, t4, t5 = (np.asarray(t[c])[req] for c in ("t3", "t4", "t5"))
    in_pre = np.bincount(req, weights=_overlap(a, b, t3, t4), minlength=n).astype(np.int64)
    in_dec = np.bincount(req, weights=_overlap(a, b, t4, t5), minlength=n).astype(np.int64)
    return in_pre, in_dec, count


@dataclass
class Membership:
    """Steps exploded to one row per (step, sequence), computed once and shared by every analysis.

    ``req`` is the request's row index (-1 when the id is not in the requests table), ``step``
    the step's row index; ``q``/``c`` are query and context lengths (floats).
    """

    req: np.ndarray
    step: np.ndarray
    is_prefill: np.ndarray
    q: np.ndarray
    c: np.ndarray

    @classmethod
    def empty(cls) -> Membership:
        e = np.empty(0)
        return cls(e.astype(np.int64), e.astype(np.int64), e.astype(bool), e, e)

    def known(self) -> Membership:
        if not len(self.req) or self.req.min() >= 0:
            return self
        keep = self.req >= 0
        return Membership(self.req[keep], self.step[keep], self.is_prefill[keep], self.q[keep], self.c[keep])

    def prefill_rows(self) -> np.ndarray:
        """Rows flagged prefill (computed once)."""
        rows = self.__dict__.get("_prefill_rows")
        if rows is None:
            rows = self.__dict__["_prefill_rows"] = np.flatnonzero(self.is_prefill)
        return rows


def _request_rows(
    rid: pa.Array | pa.ChunkedArray, request_ids: pa.Array, rows_of: Callable[[pa.Array], np.ndarray] | None = None
) -> np.ndarray:
    """Row index in ``request_ids`` of every id in ``rid`` (-1 when absent or null).

    Dictionary-encoded ids (``Bundle.table(..., dictionary=...)``) are joined on their codes: each
    chunk's dictionary (its distinct ids) is looked up once and the int32 codes index the result,
    so the millions of repeated ids in the steps are never hashed one by one. ``rows_of`` maps
    the dictionaries' ids to request rows (-1 when absent) instead of ``pc.index_in``.
    """
    if pa.types.is_dictionary(request_ids.type):
        request_ids = request_ids.dictionary_decode()
    if not pa.types.is_dictionary(rid.type):
        return to_np(pc.index_in(rid, value_set=request_ids), -1, np.int64)
    chunks = [c for c in (rid.chunks if isinstance(rid, pa.ChunkedArray) else [rid]) if len(c)]
    if not chunks:
        return np.empty(0, np.int64)
    # Every segment has its own dictionary: look them all up in one call (one hash of the
    # request ids), then shift each chunk's codes by where its dictionary starts.
    dicts = [c.dictionary for c in chunks]
    all_ids = pa.concat_arrays(dicts)
    null_row = len(all_ids)  # null ids point here
    codes, start = [], 0
    for c, d in zip(chunks, dicts, strict=True):
        k = c.indices.to_numpy(zero_copy_only=False) if not c.indices.null_count else None
        if k is None:
            valid = c.indices.is_valid().to_numpy(zero_copy_only=False)
            codes.append(np.where(valid, pc.fill_null(c.indices, 0).to_numpy().astype(np.int64) + start, null_row))
        else:  # numpy indexes with intp: convert once (the codes index twice below)
            codes.append(k.astype(np.intp) + start if start else k.astype(np.intp))
        start += len(d)
    code = np.concatenate(codes) if len(codes) > 1 else codes[0]
    rows = np.full(null_row + 1, -1, np.int64)
    if rows_of is not None:
        # Only the ids the rows use (a batch of a segment carries the whole segment's dictionary).
        used = np.zeros(null_row + 1, bool)
        used[code] = True
        idx = np.flatnonzero(used[:null_row])
        rows[idx] = rows_of(all_ids.take(pa.array(idx)))
    else:
        rows[:null_row] = to_np(pc.index_in(all_ids, value_set=request_ids), -1, np.int64)
    return rows[code]


def step_membership(
    steps: pa.Table, request_ids: pa.Array, rows_of: Callable[[pa.Array], np.ndarray] | None = None
) -> Membership:
    """Explode ``request_ids``, ``query_lens``, ``context_lens`` and ``is_prefill`` of every step once
    (``rows_of``: see :func:`_request_rows`)."""
    if steps.num_rows == 0:
        return Membership.empty()
    rid, parent = flat_list(steps, "request_ids")
    req = _request_rows(rid, request_ids, rows_of)
    qv = flat_values(steps, "query_lens")
    q = to_np(qv, 1, np.float64) if len(qv) == len(parent) else np.ones(len(parent))
    cv = flat_values(steps, "context_lens")
    c = np.maximum(to_np(cv, 0, np.float64), q) if len(cv) == len(parent) else q.copy()
    pv = flat_values(steps, "is_prefill")
    if len(pv) == len(parent) and len(parent):
        pf = to_np(pv, False, bool)
        if pv.null_count:
            # Without an explicit flag, a query of more than one token is a prefill chunk.
            pf = np.where(np.asarray(pv.is_valid().to_numpy(zero_copy_only=False), bool), pf, q > 1)
    else:
        pf = q > 1
    return Membership(req, parent, pf, q, c)


def _ids(requests: pa.Table) -> pa.Array:
    col = requests.column("request_id")
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


@dataclass
class RequestSums:
    """Per request (float64 ns unless said), summed over the (step, sequence) rows: own step time
    (forward, swap excluded) in the prefill phase, in all steps and in recompute steps; swap time
    in all steps and in the prefill phase; steps taken part in (int64); and the rows counted."""

    comp_pre: np.ndarray
    comp_all: np.ndarray
    recomp: np.ndarray
    swap_all: np.ndarray
    swap_pre: np.ndarray
    steps_in: np.ndarray
    rows: int = 0

    @classmethod
    def zeros(cls, n: int) -> RequestSums:
        return cls(*(np.zeros(n) for _ in range(5)), np.zeros(n, np.int64))

    def add(
        self,
        mem: Membership,
        s_start: np.ndarray,
        fwd_step: np.ndarray,
        sw_step: np.ndarray | None,
        first_token_ns: np.ndarray,
    ) -> None:
        """Add the rows of ``mem`` (steps indexed into ``s_start``/``fwd_step``/``sw_step``: start,
        forward time, swap time; ``sw_step`` None when no step swapped); ``first_token_ns`` is t4."""
        mem = mem.known()
        req, st = mem.req, mem.step
        if not len(req):
            return
        self.rows += len(req)
        lo = int(req.min())
        width = int(req.max()) - lo + 1
        rel = req - lo if lo else req  # rows of the chunk's request range

        def add(acc: np.ndarray, r: np.ndarray, w: np.ndarray | None = None) -> None:
            if len(r):
                acc[lo : lo + width] += np.bincount(r, weights=w, minlength=width)[:width]

        fwd = fwd_step[st]
        # A step belongs to the prefill phase when it started before the request's first token
        # (the engine stamps the first token inside the step that computed the last prompt chunk).
        # The mask is computed once per row; the rows it selects are a few per request.
        prefill_phase = s_start[st] < first_token_ns[req]
        pre = np.flatnonzero(prefill_phase)
        add(self.comp_all, rel, fwd)
        add(self.comp_pre, rel[pre], fwd[pre])
        pf = mem.prefill_rows()
        rc = pf[~prefill_phase[pf]]  # prefill rows after the first token
        add(self.recomp, rel[rc], fwd[rc])
        if sw_step is not None:
            sw = sw_step[st]
            add(self.swap_all, rel, sw)
            add(self.swap_pre, rel[pre], sw[pre])
        add(self.steps_in, rel)


def step_times(steps: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per step: start (ns), forward time (duration less swap, float ns), swap time (None when no step swapped)."""
    s_start, s_end = ns(steps, "start_ns"), ns(steps, "end_ns")
    s_swap = np.clip(to_np(steps.column("swap_ns"), 0, np.int64), 0, None)
    dur_step = (s_end - s_start).astype(np.float64)
    sw_step = np.minimum(s_swap, dur_step)
    return s_start, dur_step - sw_step, sw_step if sw_step.any() else None


def request_stages(
    requests: pa.Table,
    steps: pa.Table | None = None,
    membership: Membership | None = None,
    *,
    sums: RequestSums | None = None,
    life: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per request: ids, lifecycle bounds, ``e2e_ns``, ``ttft_ns`` and one int64 ns column per stage.

    Incomplete requests (no ``finished_ns``) are kept with ``complete`` False; their stages
    are computed up to the last stamp they reached. The own step time comes from ``sums``
    (:class:`RequestSums`, reduced chunk by chunk by the analysis), or else from ``steps`` (exploded
    here unless ``membership`` is given); ``life`` is :func:`lifecycle` of ``requests`` when known.
    """
    n = requests.num_rows
    t = life if life is not None else lifecycle(requests)
    if sums is None and steps is not None and steps.num_rows and n:
        mem = membership if membership is not None else step_membership(steps, _ids(requests))
        sums = RequestSums.zeros(n)
        sums.add(mem, *step_times(steps), t["t4"].to_numpy())
    if sums is None:
        sums = RequestSums.zeros(n)
    head = {
        "request_id": requests.column("request_id").to_pandas(),
        "workload_class": workload_classes(requests),
        "complete": t["complete"].to_numpy(),
        "arrival_ns": t["t0"].to_numpy(),
        "first_token_ns": t["t4"].to_numpy(),
        "end_ns": t["t6"].to_numpy(),
    }
    cols = {name: np.empty(n, np.int64) for name in (*STAGES, "e2e_ns", "preemptions")}
    hop = t["frontend"].to_numpy() if "frontend" in t else np.zeros(n, bool)
    bounds = {k: t[k].to_numpy() for k in ("t0", "t1", "t2", "t3", "t4", "t5", "t6")}
    # A slice of requests at a time: each is on its own, and the temporaries stay small.
    for a in range(0, n, STAGE_ROWS):
        z = min(a + STAGE_ROWS, n)
        part = _stage_part(requests.slice(a, z - a), {k: v[a:z] for k, v in bounds.items()}, sums, a, z)
        for name, v in part.items():
            cols[name][a:z] = v
        del part
    frontend = np.where(hop, cols["receive"], 0)
    return pd.DataFrame({**head, **cols, "frontend_ns": frontend, "steps": sums.steps_in}, copy=False)


# Requests whose stages are computed at a time.
STAGE_ROWS = 65_536


def _stage_part(requests: pa.Table, b: dict[str, np.ndarray], sums: RequestSums, a: int, z: int) -> dict:
    t3, t4, t5 = b["t3"], b["t4"], b["t5"]
    in_pre, in_dec, n_preempt = _preemption_overlaps(requests, b)
    comp_pre, swap_pre, recomp = sums.comp_pre[a:z], sums.swap_pre[a:z], sums.recomp[a:z]
    comp_dec = sums.comp_all[a:z] - comp_pre - recomp
    swap_dec = sums.swap_all[a:z] - swap_pre

    # Prefill interval: own steps + requeue + wait, own time capped by what is available.
    avail_pre = np.clip((t4 - t3) - in_pre, 0, None).astype(np.float64)
    own_pre = comp_pre + swap_pre
    k = np.where(own_pre > avail_pre, avail_pre / np.where(own_pre > 0, own_pre, 1), 1.0)
    comp_pre, swap_pre = comp_pre * k, swap_pre * k
    avail_dec = np.clip((t5 - t4) - in_dec, 0, None).astype(np.float64)
    own_dec = comp_dec + swap_dec + recomp
    k = np.where(own_dec > avail_dec, avail_dec / np.where(own_dec > 0, own_dec, 1), 1.0)
    comp_dec, swap_dec, recomp = comp_dec * k, swap_dec * k, recomp * k

    cols = {
        "receive": b["t1"] - b["t0"],
        "tokenize": b["t2"] - b["t1"],
        "queue": t3 - b["t2"],
        "prefill_compute": np.rint(comp_pre),
        "prefill_wait": (t4 - t3) - in_pre - np.rint(comp_pre) - np.rint(swap_pre),
        "requeue": in_pre + in_dec,
        "recompute": np.rint(recomp),
        "swap": np.rint(swap_pre) + np.rint(swap_dec),
        "decode_compute": np.rint(comp_dec),
        "decode_wait": (t5 - t4) - in_dec - np.rint(comp_dec) - np.rint(swap_dec) - np.rint(recomp),
        "streaming": b["t6"] - t5,
        "e2e_ns": b["t6"] - b["t0"],
        "preemptions": n_preempt,
    }
    return {name: np.asarray(v).astype(np.int64) for name, v in cols.items()}


def stage_totals(stages: pd.DataFrame) -> pd.Series:
    """Summed ns per stage over complete requests."""
    done = stages[stages["complete"]]
    return done[list(STAGES)].sum()


# Lifecycle intervals of the waterfall, in flow order: (name, from bound, to bound).
LIFECYCLE_INTERVALS: tuple[tuple[str, str, str], ...] = (
    ("receive", "t0", "t1"),
    ("tokenize", "t1", "t2"),
    ("queue", "t2", "t3"),
    ("prefill", "t3", "t4"),
    ("decode", "t4", "t5"),
    ("streaming", "t5", "t6"),
)
TIMELINE_STEP_COLUMNS = (
    "step_index",
    "step_id",
    "start_ns",
    "end_ns",
    "is_prefill",
    "query_len",
    "context_len",
    "batch_size",
    "num_prefill_tokens",
)


@dataclass
class RequestTimeline:
    """One request's lifecycle and the engine steps it took part in (bundle-clock int64 ns).

    ``bounds``: t0 arrival, t1 tokenize start, t2 tokenized, t3 first scheduled, t4 first token,
    t5 finished, t6 last byte (nulls filled from the previous stamp, as :func:`lifecycle`).
    ``intervals``: ``stage, start_ns, end_ns``, one row per non-empty lifecycle interval of
    :data:`LIFECYCLE_INTERVALS`, then one ``preempted`` row per preempted -> resumed span.
    ``steps``: one row per step that carried the request, in step order, with
    :data:`TIMELINE_STEP_COLUMNS` (``step_index`` is the row in the bundle's steps table;
    ``query_len``/``context_len`` are this request's tokens in the step; ``batch_size`` the
    sequences in the step). ``stages_ns``: the request's stages (:func:`request_stages`).
    """

    request_id: str
    workload_class: str | None
    complete: bool
    bounds: dict[str, int]
    intervals: pd.DataFrame
    steps: pd.DataFrame
    stages_ns: dict[str, int]


def request_timeline(requests: pa.Table, steps: pa.Table | None, request_id: str) -> RequestTimeline | None:
    """The lifecycle intervals, preempted spans and member steps of one request; None for an unknown id."""
    ids = requests.column("request_id")
    row = requests.filter(pc.equal(ids, pa.scalar(str(request_id), ids.type)))
    if row.num_rows == 0:
        return None
    row = row.slice(0, 1)
    life = lifecycle(row)
    b = {k: int(life[k].iloc[0]) for k in ("t0", "t1", "t2", "t3", "t4", "t5", "t6")}
    rows = [(name, b[a], b[z]) for name, a, z in LIFECYCLE_INTERVALS if b[z] > b[a]]
    _, p0, p1 = preempted_spans(row, life)
    rows += [("preempted", int(a), int(z)) for a, z in zip(p0, p1, strict=True)]
    intervals = pd.DataFrame(rows, columns=["stage", "start_ns", "end_ns"])
    member = pd.DataFrame({c: [] for c in TIMELINE_STEP_COLUMNS})
    near = None
    if steps is not None and steps.num_rows:
        s0, s1 = ns(steps, "start_ns"), ns(steps, "end_ns")
        idx = np.flatnonzero((s1 >= b["t0"]) & (s0 <= b["t6"]))
        near = steps.take(pa.array(idx))
        value_type = steps.schema.field("request_ids").type.value_type
        mem = step_membership(near, pa.array([str(request_id)], value_type)).known()
        if len(mem.step):
            sub = near.take(pa.array(mem.step))
            member = pd.DataFrame(
                {
                    "step_index": idx[mem.step],
                    "step_id": to_np(sub.column("step_id"), -1, np.int64),
                    "start_ns": ns(sub, "start_ns"),
                    "end_ns": ns(sub, "end_ns"),
                    "is_prefill": np.asarray(mem.is_prefill, bool),
                    "query_len": np.asarray(mem.q).astype(np.int64),
                    "context_len": np.asarray(mem.c).astype(np.int64),
                    "batch_size": to_np(pc.list_value_length(sub.column("request_ids")), 0, np.int64),
                    "num_prefill_tokens": to_np(sub.column("num_prefill_tokens"), 0, np.int64),
                }
            ).sort_values("start_ns", kind="stable", ignore_index=True)
    st = request_stages(row, near if near is not None and near.num_rows else None).iloc[0]
    cls = row.column("workload_class")[0].as_py()
    return RequestTimeline(
        request_id=str(request_id),
        workload_class=cls,
        complete=bool(life["complete"].iloc[0]),
        bounds=b,
        intervals=intervals,
        steps=member,
        stages_ns={s: int(st[s]) for s in STAGES},
    )
