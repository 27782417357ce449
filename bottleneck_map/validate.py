"""Schema and consistency checks of a bundle (``bottleneck-map validate``)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bottleneck_map.bundle import BundleError, read_bundle
from bottleneck_map.schema import TABLES

# Request lifecycle timestamps in the order they must occur (nulls are skipped).
LIFECYCLE = (
    "arrival_ns",
    "tokenize_start_ns",
    "tokenize_end_ns",
    "queued_ns",
    "first_scheduled_ns",
    "first_token_ns",
    "finished_ns",
)
_SHOWN = 5  # offending ids listed per problem


@dataclass
class ValidationReport:
    path: str
    valid: bool
    rows: dict[str, int] = field(default_factory=dict)
    start_ns: int | None = None
    end_ns: int | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def span_s(self) -> float | None:
        if self.start_ns is None or self.end_ns is None:
            return None
        return (self.end_ns - self.start_ns) / 1e9

    def to_dict(self) -> dict:
        d = asdict(self)
        d["span_s"] = self.span_s
        return d


def _ids(values: pa.Array | np.ndarray, mask: np.ndarray) -> str:
    bad = [str(v) for v in np.asarray(values, dtype=object)[mask][:_SHOWN]]
    more = int(mask.sum()) - len(bad)
    return ", ".join(bad) + (f" and {more} more" if more > 0 else "")


def _check_requests(t: pa.Table, errors: list[str]) -> None:
    ids = t.column("request_id")
    if len(pc.unique(ids)) != t.num_rows:
        counts = pc.value_counts(ids)
        dup = [c["values"].as_py() for c in counts if c["counts"].as_py() > 1][:_SHOWN]
        errors.append(f"requests: request_id not unique ({', '.join(dup)})")
    rid = ids.to_numpy()
    prev = None
    for col in LIFECYCLE:
        cur = t.column(col)
        if prev is not None:
            # compare each stamp with the latest earlier non-null stamp
            earlier = prev
            both = pc.and_(pc.is_valid(cur), pc.is_valid(earlier))
            bad = pc.and_kleene(both, pc.less(cur, earlier)).to_numpy(zero_copy_only=False)
            bad = np.asarray(bad, dtype=bool)
            if bad.any():
                errors.append(f"requests: {col} earlier than the preceding lifecycle event for {_ids(rid, bad)}")
            prev = pc.if_else(pc.is_valid(cur), cur, earlier)
        else:
            prev = cur
    for col in ("first_byte_ns", "last_byte_ns"):
        cur, fin = t.column(col), t.column("first_token_ns")
        both = pc.and_(pc.is_valid(cur), pc.is_valid(fin))
        bad = np.asarray(pc.and_kleene(both, pc.less(cur, fin)).to_numpy(zero_copy_only=False), dtype=bool)
        if bad.any():
            errors.append(f"requests: {col} earlier than first_token_ns for {_ids(rid, bad)}")
    for col in ("token_ns", "delivered_ns", "scheduled_ns"):
        lists = t.column(col).combine_chunks()
        flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False)
        if len(flat) < 2:
            continue
        parent = pc.list_parent_indices(lists).to_numpy()
        dec = (np.diff(flat) < 0) & (parent[1:] == parent[:-1])
        if dec.any():
            rows = np.zeros(t.num_rows, dtype=bool)
            rows[parent[1:][dec]] = True
            errors.append(f"requests: {col} not monotonic for {_ids(rid, rows)}")


def _check_steps(t: pa.Table, request_ids: pa.Array, closed: bool, errors: list[str], warns: list[str]) -> None:
    sid = t.column("step_id").to_numpy()
    if len(np.unique(sid)) != len(sid):
        errors.append("steps: step_id not unique")
    start, end = t.column("start_ns").to_numpy(), t.column("end_ns").to_numpy()
    bad = end < start
    if bad.any():
        errors.append(f"steps: end_ns before start_ns for step {_ids(sid, bad)}")
    inst = t.column("instance").to_numpy(zero_copy_only=False)
    for name in set(inst.tolist()):
        sel = inst == name
        order = np.argsort(sid[sel], kind="stable")
        s = start[sel][order]
        if len(s) > 1 and (np.diff(s) < 0).any():
            errors.append(f"steps: start_ns not monotonic in step_id order (instance {name})")
    lists = t.column("request_ids").combine_chunks()
    referenced = pc.unique(pc.list_flatten(lists))
    unknown = pc.filter(referenced, pc.invert(pc.is_in(referenced, value_set=request_ids)))
    if len(unknown):
        shown = ", ".join(unknown.to_pylist()[:_SHOWN])
        msg = f"steps: {len(unknown)} request ids not in requests ({shown})"
        if closed:
            errors.append(msg)
        else:
            warns.append(msg + "; the bundle was not closed, so they may have been in flight")
    for col in ("query_lens", "context_lens", "is_prefill"):
        lens = pc.list_value_length(t.column(col).combine_chunks())
        ref = pc.list_value_length(lists)
        mism = pc.and_kleene(pc.is_valid(lens), pc.not_equal(lens, ref))
        if pc.any(mism).as_py():
            errors.append(f"steps: {col} length differs from request_ids length")


# Columns that are points in time (must be positive) and durations or counts (must not be negative).
TIMES = {
    "requests": (*LIFECYCLE, "first_byte_ns", "last_byte_ns", "scheduled_ns", "preempted_ns", "resumed_ns", "token_ns",
                 "delivered_ns"),
    "steps": ("start_ns", "end_ns"),
    "samples": ("ts_ns",),
}  # fmt: skip
NON_NEGATIVE = {
    "requests": ("prompt_tokens", "output_tokens", "max_tokens", "cached_prompt_tokens", "recomputed_tokens",
                 "swapped_bytes"),
    "steps": ("schedule_ns", "prepare_ns", "forward_ns", "sample_ns", "postprocess_ns", "swap_ns",
              "num_prefill_tokens", "num_prefill_seqs", "num_decode_seqs", "num_running", "num_waiting",
              "num_swapped", "num_preempted", "kv_blocks_used", "kv_blocks_free", "swap_out_bytes", "swap_in_bytes"),
}  # fmt: skip
PEAKS = ("peak_flops", "peak_bandwidth_bytes_per_s")
MEASURED_PEAKS = ("copy_bandwidth_bytes_per_s", "matmul_flops")


def _check_ranges(name: str, t: pa.Table, errors: list[str]) -> None:
    for col in TIMES.get(name, ()):
        if col not in t.column_names:
            continue
        c = t.column(col)
        if pa.types.is_list(c.type):
            c = pc.list_flatten(c)
        if len(c) and pc.any(pc.less_equal(c, 0)).as_py():
            errors.append(f"{name}: {col} has zero or negative times")
    for col in NON_NEGATIVE.get(name, ()):
        if col in t.column_names and pc.any(pc.less(t.column(col), 0)).as_py():
            errors.append(f"{name}: {col} has negative values")


def _check_meta(meta: dict, errors: list[str]) -> None:
    device = meta.get("device") or {}
    measured = device.get("measured")
    if measured is not None and not isinstance(measured, dict):
        errors.append(f"meta.json: field device.measured is {measured!r}, expected an object")
        measured = None
    fields = [(f"device.{k}", device.get(k)) for k in PEAKS]
    fields += [(f"device.measured.{k}", (measured or {}).get(k)) for k in MEASURED_PEAKS]
    for name, v in fields:
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            errors.append(f"meta.json: field {name} is {v!r}, expected a positive finite number")


def validate_bundle(path: str | os.PathLike[str]) -> ValidationReport:
    """Check a bundle's schema and consistency; never raises for a bad bundle."""
    report = ValidationReport(path=str(path), valid=False)
    try:
        bundle = read_bundle(path)
        tables = {name: bundle.table(name) for name in TABLES}
    except BundleError as exc:
        report.errors.append(str(exc))
        return report
    except (OSError, ValueError, pa.ArrowException) as exc:
        report.errors.append(f"{path}: cannot be read ({type(exc).__name__}: {exc})")
        return report
    report.warnings.extend(bundle.warnings)
    report.rows = {name: t.num_rows for name, t in tables.items()}
    req, steps, samples = tables["requests"], tables["steps"], tables["samples"]
    _check_meta(bundle.meta, report.errors)
    for name, t in tables.items():
        _check_ranges(name, t, report.errors)
    _check_requests(req, report.errors)
    _check_steps(steps, req.column("request_id").combine_chunks(), bundle.closed, report.errors, report.warnings)
    starts = [pc.min(c).as_py() for c in (req.column("arrival_ns"), steps.column("start_ns"), samples.column("ts_ns"))]
    ends = [
        pc.max(c).as_py()
        for c in (
            req.column("finished_ns"),
            req.column("last_byte_ns"),
            steps.column("end_ns"),
            samples.column("ts_ns"),
        )
    ]
    starts, ends = [s for s in starts if s is not None], [e for e in ends if e is not None]
    report.start_ns = min(starts) if starts else None
    report.end_ns = max(ends) if ends else None
    report.valid = not report.errors
    return report


def refuse_unless_forced(
    path: str | os.PathLike[str], errors: list[str], force: bool, verb: tuple[str, str]
) -> str | None:
    """The commands' one policy for a bundle that :func:`validate_bundle` rejects (``errors``):
    without ``force``, a :class:`BundleError` listing why; with it, the warning to print before
    going on. ``verb`` names what the command does, as (``"analyse"``, ``"analysing"``).
    None when ``errors`` is empty."""
    if not errors:
        return None
    reasons = "".join(f"\n  {e}" for e in errors)
    if not force:
        raise BundleError(
            f"{path}: `bottleneck-map validate` rejects this bundle:{reasons}\n"
            f"Fix the producer, or pass --force to {verb[0]} it anyway (its verdicts may be wrong)."
        )
    return (
        f"{path}: `bottleneck-map validate` rejects this bundle; "
        f"{verb[1]} it anyway (--force), so the verdicts may be wrong:{reasons}"
    )
