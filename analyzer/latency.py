"""Latency and service metrics, defined exactly as ``vllm bench serve`` defines them.

* TTFT: arrival -> first byte delivered to the client (``first_token_ns`` when nothing
  was streamed).
* E2E: arrival -> last byte delivered (``finished_ns`` when nothing was streamed).
* TPOT: (E2E - TTFT) / (output_tokens - 1), for requests with more than one output token.
* ITL: every gap between consecutive delivered chunks (``delivered_ns``, else
  ``token_ns``), pooled over all requests.
* Percentiles p50/p90/p95/p99 with numpy's linear interpolation (as vLLM does).
* Throughput over the benchmark duration (first arrival -> last completion);
  goodput: completed requests meeting every given SLO, per second.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bottleneck_map.analyzer.data import NA_NS, flat_list, ns, to_np, workload_classes
from bottleneck_map.analyzer.result import LatencySummary, Percentiles

SLO_KEYS = ("ttft", "tpot", "e2e", "itl")
_FAILED_REASONS = {"error", "abort", "aborted", "cancelled"}


def request_metrics(requests: pa.Table, *, labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per request: ``ok``, ``ttft_s``, ``tpot_s``, ``e2e_s``, token counts, preemptions.

    ``labels``: the ``request_id`` and ``workload_class`` columns of these requests when already
    taken (:func:`request_stages`'s), shared instead of taken again."""
    arrival = ns(requests, "arrival_ns")
    first = ns(requests, "first_byte_ns")
    first = np.where(first == NA_NS, ns(requests, "first_token_ns"), first)
    end = ns(requests, "last_byte_ns")
    fin = ns(requests, "finished_ns")
    end = np.where(end == NA_NS, fin, end)
    out_tok = to_np(requests.column("output_tokens"), 0, np.int64)
    prompt = to_np(requests.column("prompt_tokens"), 0, np.int64)
    cached = to_np(requests.column("cached_prompt_tokens"), 0, np.int64)
    reason = requests.column("finish_reason")
    error = (
        requests.column("error").is_valid().to_numpy(zero_copy_only=False) if requests.num_rows else np.empty(0, bool)
    )
    failed = error | np.asarray(
        pc.is_in(reason, value_set=pa.array(sorted(_FAILED_REASONS))).to_numpy(zero_copy_only=False), bool
    )
    ok = (fin != NA_NS) & ~failed & (first != NA_NS)
    ttft = np.where(first != NA_NS, (first - arrival) / 1e9, np.nan)
    e2e = np.where(end != NA_NS, (end - arrival) / 1e9, np.nan)
    tpot = np.where(out_tok > 1, (e2e - ttft) / np.maximum(out_tok - 1, 1), np.nan)
    _, parent = flat_list(requests, "preempted_ns")
    return pd.DataFrame(
        {
            "request_id": requests.column("request_id").to_pandas() if labels is None else labels["request_id"],
            "workload_class": workload_classes(requests) if labels is None else labels["workload_class"],
            "ok": ok,
            "failed": failed,
            "arrival_ns": arrival,
            "end_ns": end,
            "ttft_s": ttft,
            "tpot_s": tpot,
            "e2e_s": e2e,
            "prompt_tokens": prompt,
            "output_tokens": out_tok,
            "cached_prompt_tokens": cached,
            "preemptions": np.bincount(parent, minlength=requests.num_rows) if len(parent) else 0,
        },
        copy=False,
    )


def _gaps(lists: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Gaps between consecutive values of every list (int64), and the list (row) each is in."""
    values = pc.list_flatten(lists) if len(lists) else pa.array([], pa.int64())
    if len(values) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if values.null_count:
        parent = to_np(pc.list_parent_indices(lists), 0, np.int64)
        v = to_np(values, NA_NS, np.int64)
        valid = (parent[1:] == parent[:-1]) & (v[1:] != NA_NS) & (v[:-1] != NA_NS)
        return parent[1:][valid], np.diff(v)[valid]
    # No nulls: drop the gaps that cross from one request's list to the next (cheaper than parent indices).
    v = to_np(values, 0, np.int64)
    lengths = to_np(pc.list_value_length(lists), 0, np.int64)
    ends = np.cumsum(lengths)
    valid = np.ones(len(v) - 1, bool)
    valid[ends[(lengths > 0) & (ends < len(v))] - 1] = False
    req = np.repeat(np.arange(len(lengths)), np.maximum(lengths - 1, 0))
    return req, np.diff(v)[valid]


def itl_column(requests: pa.Table) -> str:
    """The list column ITL is taken from: ``delivered_ns``, or ``token_ns`` when nothing was delivered."""
    col = "delivered_ns"
    if requests.num_rows == 0 or requests.column(col).null_count == requests.num_rows:
        col = "token_ns"
    return col


def inter_token_latencies(requests: pa.Table) -> pd.DataFrame:
    """Every gap between consecutive delivered chunks: ``req`` (row index) and ``itl_s``."""
    req, gaps = _gaps(requests.column(itl_column(requests)))
    return pd.DataFrame({"req": req, "itl_s": gaps / 1e9})


@dataclass
class GapPool:
    """Pooled inter-token gaps in integer ns, sorted, one array per workload class (code order of
    :func:`class_codes`): uint32 when every gap is in 0..~4.3 s, else int64. Exact, and 4 bytes a gap."""

    by_class: list[np.ndarray]
    _taken: dict | None = None

    def taken(self) -> GapPool:
        """The percentiles of all gaps and of every class, kept; the gaps themselves dropped."""
        done = {k: self.percentiles(k) for k in (None, *range(len(self.by_class)))}
        return GapPool([np.empty(0, a.dtype) for a in self.by_class], done)

    def percentiles(self, k: int | None = None) -> Percentiles:
        """The ITL percentiles (seconds) of class ``k``, or of all gaps (numpy's linear method)."""
        if self._taken is not None:
            return self._taken[k]
        arrays = [a for a in (self.by_class if k is None else self.by_class[k : k + 1]) if len(a)]
        n = sum(len(a) for a in arrays)
        if not n:
            return Percentiles(count=0)
        q = np.true_divide(np.array([50.0, 90.0, 95.0, 99.0]), 100)
        virtual = (n - 1) * q  # numpy's "linear" method, step by step
        prev = np.floor(virtual)
        nxt = prev + 1
        above, below = virtual >= n - 1, virtual < 0
        prev[above], nxt[above] = n - 1, n - 1
        prev[below], nxt[below] = 0, 0
        gamma = virtual - prev
        a = np.array([_kth(arrays, int(i)) for i in prev], np.float64) / 1e9
        b = np.array([_kth(arrays, int(i)) for i in nxt], np.float64) / 1e9
        diff = b - a
        lerp = a + diff * gamma
        np.subtract(b, diff * (1 - gamma), out=lerp, where=gamma >= 0.5)
        total = sum(int(x.sum(dtype=np.int64)) for x in arrays)
        p50, p90, p95, p99 = (float(x) for x in lerp)
        mx = max(int(x[-1]) for x in arrays)
        return Percentiles(mean=total / n / 1e9, p50=p50, p90=p90, p95=p95, p99=p99, max=mx / 1e9, count=n)


def _kth(arrays: list[np.ndarray], k: int) -> int:
    """The k-th smallest value (0-based) of the union of sorted arrays (binary search on the value)."""
    if len(arrays) == 1:
        return int(arrays[0][k])
    lo, hi = min(int(a[0]) for a in arrays), max(int(a[-1]) for a in arrays)
    while lo < hi:
        mid = (lo + hi) // 2
        # The probe in the arrays' own dtype: a Python int would make numpy convert the whole array.
        if sum(int(np.searchsorted(a, a.dtype.type(mid), side="right")) for a in arrays) >= k + 1:
            hi = mid
        else:
            lo = mid + 1
    return lo


def class_codes(workload_class: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Per request, the code of its workload class (:func:`~bottleneck_map.analyzer.data.workload_classes`),
    and the classes (sorted)."""
    return pd.factorize(workload_class, sort=True)


def _compact(gaps: np.ndarray) -> np.ndarray:
    """Gaps as uint32 ns when they all fit (0 .. ~4.3 s), else int64."""
    if len(gaps) and int(gaps.min()) >= 0 and int(gaps.max()) < 2**32:
        return gaps.astype(np.uint32)
    return gaps if len(gaps) else np.empty(0, np.uint32)


class GapCollector:
    """Collects the ITL gaps of a chunk of requests at a time (:meth:`add`, in row order) into
    one array per workload class; :meth:`pool` sorts them into a :class:`GapPool`."""

    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes
        self.parts: list[list[np.ndarray]] = [[] for _ in range(max(n_classes, 1))]

    def add(self, lists: pa.ChunkedArray | pa.Array, codes: np.ndarray) -> None:
        """The gaps inside ``lists``; ``codes`` is the class code of each of its requests."""
        req, gaps = _gaps(lists)
        if self.n_classes > 1:
            small = codes.astype(np.int8) if self.n_classes < 128 else codes
            cls = small[req]  # each gap's class, from the request it is in
            for k in range(self.n_classes):
                part = gaps[cls == k]
                if len(part):
                    self.parts[k].append(_compact(part))
        else:
            self.parts[0].append(_compact(gaps))

    def pool(self) -> GapPool:
        parts = self.parts
        dtype = np.uint32 if all(p.dtype == np.uint32 for ps in parts for p in ps) else np.int64
        out = []
        for ps in parts:
            # Each piece is copied into its class array and dropped, so the freed pieces are
            # reused for the next class's array.
            a = np.empty(sum(len(p) for p in ps), dtype)
            at = 0
            for i, p in enumerate(ps):
                a[at : at + len(p)] = p
                at += len(p)
                ps[i] = None
            ps.clear()
            a.sort()
            out.append(a)
        return GapPool(out)


def pooled_gaps(chunks: Iterable[pa.ChunkedArray | pa.Array], codes: np.ndarray, n_classes: int) -> GapPool:
    """:class:`GapPool` of the ITL lists given a chunk of requests at a time (in row order);
    ``codes`` is each request's class code (:func:`class_codes`)."""
    acc = GapCollector(n_classes)
    off = 0
    for lists in chunks:
        acc.add(lists, codes[off : off + len(lists)])
        off += len(lists)
    return acc.pool()


def percentiles(values: np.ndarray | pd.Series, *, finite: bool = False, owned: bool = False) -> Percentiles:
    """Mean, p50/p90/p95/p99 (numpy's linear interpolation, as vLLM) and max of the finite values.

    ``finite``: the caller guarantees there is no NaN/inf; ``owned``: the array may be reordered.
    """
    a = np.asarray(values, dtype=np.float64)
    if not finite:
        a = a[np.isfinite(a)]
        owned = True
    if not len(a):
        return Percentiles(count=0)
    mean, mx = float(a.mean()), float(a.max())
    p50, p90, p95, p99 = np.percentile(a, [50, 90, 95, 99], overwrite_input=owned and a.flags.writeable)
    return Percentiles(mean=mean, p50=float(p50), p90=float(p90), p95=float(p95), p99=float(p99), max=mx, count=len(a))


def meets_slo(metrics: pd.DataFrame, slo: Mapping[str, float]) -> np.ndarray:
    """Per request: completed and every given SLO met (a missing value, e.g. TPOT of a 1-token reply, passes)."""
    good = metrics["ok"].to_numpy().copy()
    for key in ("ttft", "tpot", "e2e"):
        if key in slo:
            v = metrics[f"{key}_s"].to_numpy()
            good &= ~(v > slo[key])
    return good


def summarize(
    metrics: pd.DataFrame,
    itl: pd.DataFrame | np.ndarray | Percentiles,
    *,
    workload_class: str = "all",
    duration_s: float | None = None,
    slo: Mapping[str, float] | None = None,
) -> LatencySummary:
    """The ``vllm bench serve`` summary of ``metrics`` (already filtered to one class or not)."""
    ok = metrics["ok"].to_numpy()
    done = metrics[ok]
    if duration_s is None:
        duration_s = _duration_s(metrics)
    dur = duration_s if duration_s and duration_s > 0 else float("nan")
    # ITL: percentiles already taken (a GapPool's), the ``inter_token_latencies`` frame, or an
    # array we own (a class subset) that may be reordered.
    if isinstance(itl, Percentiles):
        itl_p = itl
    else:
        itl_owned = isinstance(itl, np.ndarray)
        itl_v = itl if itl_owned else (itl["itl_s"].to_numpy() if len(itl) else np.empty(0))
        itl_p = percentiles(itl_v, finite=True, owned=itl_owned)
    prompt = int(done["prompt_tokens"].sum())
    output = int(done["output_tokens"].sum())
    summary = LatencySummary(
        workload_class=workload_class,
        completed=int(ok.sum()),
        failed=int(metrics["failed"].sum()),
        duration_s=float(duration_s or 0.0),
        request_throughput=_rate(len(done), dur),
        input_token_throughput=_rate(prompt, dur),
        output_token_throughput=_rate(output, dur),
        total_token_throughput=_rate(prompt + output, dur),
        ttft=percentiles(done["ttft_s"]),
        tpot=percentiles(done["tpot_s"]),
        itl=itl_p,
        e2e=percentiles(done["e2e_s"]),
        prefix_cache_hit_rate=(
            float(metrics["cached_prompt_tokens"].sum() / metrics["prompt_tokens"].sum())
            if metrics["prompt_tokens"].sum() > 0
            else None
        ),
        preemptions=int(np.asarray(metrics["preemptions"]).sum()),
        preempted_requests=int((np.asarray(metrics["preemptions"]) > 0).sum()),
    )
    if slo:
        good = meets_slo(metrics, slo)
        summary.goodput = _rate(int(good.sum()), dur)
        summary.slo_attainment = float(good.sum() / len(done)) if len(done) else None
    return summary


def _rate(n: float, dur: float) -> float:
    return float(n / dur) if np.isfinite(dur) and dur > 0 else 0.0


def _duration_s(metrics: pd.DataFrame) -> float:
    arr = metrics["arrival_ns"].to_numpy()
    end = metrics["end_ns"].to_numpy()
    end = end[end != NA_NS]
    if not len(arr) or not len(end):
        return 0.0
    return float((end.max() - arr.min()) / 1e9)


def latency_summaries(
    metrics: pd.DataFrame, itl: pd.DataFrame | GapPool, slo: Mapping[str, float] | None = None
) -> list[LatencySummary]:
    """``all`` first, then one summary per workload class (when there is more than one).

    ``itl``: the :func:`inter_token_latencies` frame, or a :class:`GapPool` by :func:`class_codes`.
    """
    duration = _duration_s(metrics)
    codes, classes = class_codes(metrics["workload_class"])
    metrics = metrics.drop(columns=["request_id", "workload_class"])  # per-class copies without the strings
    pooled = isinstance(itl, GapPool)
    out = [summarize(metrics, itl.percentiles() if pooled else itl, duration_s=duration, slo=slo)]
    if len(classes) > 1:
        if not pooled:
            itl_v = itl["itl_s"].to_numpy()
            itl_codes = codes[itl["req"].to_numpy()] if len(itl) else np.empty(0, np.int64)
        for k, c in enumerate(classes):
            per = itl.percentiles(k) if pooled else itl_v[itl_codes == k]
            out.append(summarize(metrics[codes == k], per, workload_class=str(c), duration_s=duration, slo=slo))
    return out


def parse_slo(text: str | None) -> dict[str, float]:
    """Parse ``ttft=0.5,tpot=0.05,e2e=10`` (seconds) into a dict; raises ValueError naming the bad part."""
    if not text:
        return {}
    out: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, val = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in ("ttft", "tpot", "e2e"):
            raise ValueError(f"{part!r}: expected ttft=SECONDS, tpot=SECONDS or e2e=SECONDS")
        try:
            v = float(val)
        except ValueError:
            raise ValueError(f"{part!r}: {val!r} is not a number of seconds") from None
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"{part!r}: must be a positive number of seconds")
        out[key] = v
    return out


def histogram_quantiles(bounds: Iterable[float], counts: Iterable[float], qs: Iterable[float]) -> list[float | None]:
    """Quantiles of a cumulative histogram, interpolated linearly inside a bucket as Prometheus'
    ``histogram_quantile`` does. ``counts`` holds the cumulative count at each finite upper bound
    and then the total (the ``+Inf`` bucket). None when the histogram is empty; a quantile in the
    open last bucket answers the highest finite bound."""
    b, c = list(bounds), list(counts)
    total = c[-1] if c else 0.0
    c = c[: len(b)]
    out: list[float | None] = []
    for q in qs:
        if total <= 0:
            out.append(None)
            continue
        rank = q * total
        prev_b, prev_c = 0.0, 0.0
        value = b[-1]
        for ub, cc in zip(b, c, strict=True):
            if cc >= rank:
                value = ub if cc == prev_c else prev_b + (ub - prev_b) * (rank - prev_c) / (cc - prev_c)
                break
            prev_b, prev_c = ub, cc
        out.append(value)
    return out
