"""The (step, sequence) rows, exploded a chunk of steps at a time and reduced at once.

A step's ``request_ids``, ``query_lens``, ``context_lens`` and ``is_prefill`` lists hold one
row per sequence it ran: about 32 rows per request, 32 million for a million requests. The
analyses need only sums over them, so :func:`reduce_steps` reads those four list columns
``chunk_rows`` steps at a time (``Tables.chunks``), explodes the chunk
(:func:`~bottleneck_map.analyzer.stages.step_membership`), adds it into

* per-step sums (:class:`StepSums`, for the roofline): sequences, context lengths, query x
  context, and the decode rows' part of them;
* per-request sums (:class:`RequestSums`, for the stages): own step time in the prefill phase
  (the step started before the request's first token), in all steps, in recompute (a prefill
  row after the first token), the swap time of those steps, and the number of steps;

and drops it. :func:`own_step_sums` is the second, optional pass of the attribution (the class
make-up of each request's own steps). Sums of integer nanoseconds are exact whatever the chunk
size; the class make-up sums fractions, equal to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bottleneck_map.analyzer.data import HEAVY_COLUMNS, Tables, ns
from bottleneck_map.analyzer.stages import Membership, RequestSums, step_membership, step_times
from bottleneck_map.bundle import BundleError

# Steps per chunk: about 260k (step, sequence) rows at 64 sequences per step, ~2 MB per row array
# (smaller chunks stay in cache and keep the temporaries small; the per-chunk overhead is small).
CHUNK_STEPS = 4096
_LIST_COLUMNS = HEAVY_COLUMNS["steps"]


class RequestLookup:
    """Request row of every distinct id of a chunk's dictionary, without hashing all request ids per chunk.

    The ids of the requests whose lifetime (arrival -> last byte; unbounded when unfinished)
    overlaps the chunk's time span are matched against the chunk's dictionary; ids left over
    (a request outside its own bounds, or an id that no request has) are looked up among all
    requests. A duplicated request id (two writers with counter ids in one bundle) maps to the
    first row of that id among the requests alive in the chunk's span, not to its first row
    in the table.
    """

    def __init__(self, ids: pa.Array, lo: np.ndarray, hi: np.ndarray) -> None:
        if pa.types.is_dictionary(ids.type):
            ids = ids.dictionary_decode()
        self.ids = ids
        # Finished requests by start: the candidates of a chunk started at most the longest
        # lifetime before it; unfinished ones (``hi`` at the int64 maximum) are kept apart.
        big = np.iinfo(np.int64).max
        done = hi != big
        self.by_lo = np.flatnonzero(done)[np.argsort(lo[done], kind="stable")]
        self.lo_sorted = lo[self.by_lo]
        self.hi = hi
        self.longest = int((hi[done] - lo[done]).max()) if done.any() else 0
        self.open = np.flatnonzero(~done)[np.argsort(lo[~done], kind="stable")]
        self.open_lo = lo[self.open]

    def rows(self, dictionary: pa.Array, t_lo: int, t_hi: int) -> np.ndarray:
        n = len(dictionary)
        out = np.full(n, -1, np.int64)
        if not n:
            return out
        since = max(t_lo - self.longest, int(np.iinfo(np.int64).min))
        a = int(np.searchsorted(self.lo_sorted, since, side="left"))
        b = int(np.searchsorted(self.lo_sorted, t_hi, side="right"))
        cand = self.by_lo[a:b]
        cand = cand[self.hi[cand] >= t_lo]
        k = int(np.searchsorted(self.open_lo, t_hi, side="right"))
        if k:
            cand = np.concatenate([cand, self.open[:k]])
        cand = np.sort(cand)
        if len(cand):
            pos = pc.index_in(self.ids.take(pa.array(cand)), value_set=dictionary)
            hit = pos.is_valid().to_numpy(zero_copy_only=False)
            if hit.any():
                p, r = pc.drop_null(pos).to_numpy().astype(np.int64), cand[hit]
                o = np.lexsort((r, p))  # the first row of a duplicated id
                p, r = p[o], r[o]
                first = np.r_[True, p[1:] != p[:-1]]
                out[p[first]] = r[first]
        missing = self._repeated(dictionary, out)
        if len(missing):
            # Among all requests: hash the few ids left over and probe every request id with
            # them (cheaper than hashing all request ids), the first row of each id wins.
            pos = pc.index_in(self.ids, value_set=dictionary.take(pa.array(missing)))
            hit = np.flatnonzero(pos.is_valid().to_numpy(zero_copy_only=False))
            if len(hit):
                p = pc.drop_null(pos).to_numpy().astype(np.int64)
                p, first = np.unique(p, return_index=True)
                out[missing[p]] = hit[first]
            self._repeated(dictionary, out)
        return out

    @staticmethod
    def _repeated(dictionary: pa.Array, out: np.ndarray) -> np.ndarray:
        """An id repeated in the dictionary (the dictionaries of two batches of one segment) takes
        the row of its first occurrence; returns the entries still without a row."""
        missing = np.flatnonzero(out < 0)
        if len(missing) and len(missing) < len(out):
            first = pc.index_in(dictionary.take(pa.array(missing)), value_set=dictionary).fill_null(-1).to_numpy()
            first = np.asarray(first, np.int64)
            out[missing] = np.where(first >= 0, out[np.maximum(first, 0)], -1)
            missing = np.flatnonzero(out < 0)
        return missing


@dataclass
class StepSums:
    """Per step, sums over its sequences (float64). The ``list_*`` sums, for steps whose counters
    (``num_prefill_tokens`` and friends) are incomplete, are None when not asked for."""

    seqs: np.ndarray
    sum_ctx: np.ndarray
    d_ctx: np.ndarray
    sum_qc: np.ndarray
    list_tokens: np.ndarray | None = None
    list_d_tok: np.ndarray | None = None
    list_d_seqs: np.ndarray | None = None
    list_d_qc: np.ndarray | None = None
    list_prefill_tokens: np.ndarray | None = None

    @classmethod
    def of(cls, mem: Membership, n: int, lists: bool = True) -> StepSums:
        """The sums of one exploded chunk of ``n`` steps (``mem.step``: the step's row in the chunk,
        in step order, as :func:`~bottleneck_map.analyzer.stages.step_membership` gives it)."""
        parent, qv, cv, isp = mem.step, mem.q, mem.c, mem.is_prefill
        # The rows are in step order: each step's rows are one run, summed in place (one pass);
        # the corrections touch only the few rows that are prefill chunks or have a query longer
        # than one token.
        bounds = np.searchsorted(parent, np.arange(n + 1))
        seqs = np.diff(bounds)
        sum_ctx = np.zeros(n)
        nz = np.flatnonzero(seqs)
        if len(nz):
            sum_ctx[nz] = np.add.reduceat(cv, bounds[nz])
        pre = mem.prefill_rows()
        d_ctx = sum_ctx - np.bincount(parent[pre], weights=cv[pre], minlength=n)
        multi = np.flatnonzero(qv != 1)
        sum_qc = sum_ctx + np.bincount(parent[multi], weights=(qv[multi] - 1) * cv[multi], minlength=n)
        out = cls(seqs.astype(np.float64), sum_ctx, d_ctx, sum_qc)
        if lists:
            d = (~isp).astype(np.float64)
            out.list_tokens = np.bincount(parent, weights=qv, minlength=n)
            out.list_d_tok = np.bincount(parent, weights=qv * d, minlength=n)
            out.list_d_seqs = np.bincount(parent, weights=d, minlength=n)
            out.list_d_qc = np.bincount(parent, weights=qv * cv * d, minlength=n)
            out.list_prefill_tokens = np.bincount(parent, weights=qv * isp, minlength=n)
        return out

    @classmethod
    def concat(cls, parts: list[StepSums]) -> StepSums:
        def cat(name: str) -> np.ndarray | None:
            vals = [getattr(p, name) for p in parts]
            return None if not vals or vals[0] is None else np.concatenate(vals)

        if not parts:
            e = np.empty(0)
            return cls(e, e, e, e)
        return cls(**{f: cat(f) for f in cls.__dataclass_fields__})


def _step_chunks(t: Tables, steps_lean: pa.Table, lookup: RequestLookup, chunk_rows: int):
    """(first step row, step count, membership with step rows local to the chunk) per chunk."""
    s_start, s_end = ns(steps_lean, "start_ns"), ns(steps_lean, "end_ns")
    n_steps = steps_lean.num_rows
    off = 0
    for chunk in t.chunks("steps", _LIST_COLUMNS, chunk_rows):
        k = chunk.num_rows
        if off + k > n_steps:
            break
        lo, hi = (int(s_start[off : off + k].min()), int(s_end[off : off + k].max())) if k else (0, 0)
        mem = step_membership(chunk, lookup.ids, rows_of=lambda d, lo=lo, hi=hi: lookup.rows(d, lo, hi))
        yield off, k, mem
        off += k
    if off != n_steps:
        raise BundleError(f"{t.path}: the steps' lists have {off} rows, the steps table {n_steps}")


def reduce_steps(
    t: Tables,
    steps_lean: pa.Table,
    lookup: RequestLookup,
    first_token_ns: np.ndarray,
    *,
    list_sums: bool,
    chunk_rows: int = CHUNK_STEPS,
) -> tuple[StepSums, RequestSums]:
    """One pass over the steps' lists: the per-step sums of the roofline and the per-request own
    step time of the stages (``first_token_ns``: each request's first-token bound, ``t4``)."""
    n = len(first_token_ns)
    s_start, fwd_step, sw_step = step_times(steps_lean)
    rs = RequestSums.zeros(n)
    parts = []
    for off, k, mem in _step_chunks(t, steps_lean, lookup, chunk_rows):
        parts.append(StepSums.of(mem, k, lists=list_sums))
        sl = slice(off, off + k)
        rs.add(mem, s_start[sl], fwd_step[sl], None if sw_step is None else sw_step[sl], first_token_ns)
    return StepSums.concat(parts), rs


def own_step_sums(
    t: Tables,
    steps_lean: pa.Table,
    lookup: RequestLookup,
    sb: pd.DataFrame,
    first_token_ns: np.ndarray,
    *,
    chunk_rows: int = CHUNK_STEPS,
) -> pd.DataFrame:
    """:func:`~bottleneck_map.analyzer.attribution.own_step_time`, a chunk of steps at a time."""
    from bottleneck_map.analyzer.attribution import own_step_time

    n = len(first_token_ns)
    out: pd.DataFrame | None = None
    for off, k, mem in _step_chunks(t, steps_lean, lookup, chunk_rows):
        part = own_step_time(mem, sb.iloc[off : off + k], n, first_token_ns)
        out = part if out is None else out + part
    return out if out is not None else own_step_time(Membership.empty(), sb.iloc[:0], n, first_token_ns)


__all__ = ["CHUNK_STEPS", "RequestLookup", "RequestSums", "StepSums", "own_step_sums", "reduce_steps"]
