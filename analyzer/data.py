"""The common data layer: open a bundle once and hand the analyses Arrow tables and numpy arrays.

Times stay int64 nanoseconds; nulls become ``NA_NS`` (the int64 minimum) or ``NaN``
in float arrays, never zero.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bottleneck_map.bundle import Bundle, BundleError, read_bundle
from bottleneck_map.schema import schema_for

NA_NS = np.iinfo(np.int64).min
TABLE_NAMES = ("requests", "steps", "samples")
# Read dictionary-encoded: a step's request ids repeat every id once per step it was in (tens of
# millions of strings in a large bundle); as codes into each segment's distinct ids they cost
# 4 bytes each and join to the requests table without hashing every one (stages.step_membership).
DICTIONARY_COLUMNS = {"steps": ("request_ids",)}


# Columns the analysis reads chunk by chunk (``Tables.chunks``) instead of with the rest of the
# table (``Tables.lean``): the per-token and per-sequence lists, and free text.
HEAVY_COLUMNS = {
    "requests": ("scheduled_ns", "token_ns", "delivered_ns", "prompt_text", "output_text"),
    "steps": ("request_ids", "query_lens", "context_lens", "is_prefill"),
    "samples": (),
}
# Columns of the requests table that no analysis reads (left out of ``Tables.lean``).
UNUSED_COLUMNS = {"requests": ("trace_id", "max_tokens", "recomputed_tokens", "swapped_bytes")}


# Rows of a segment read at once by ``Tables.chunks`` (larger segments are read in batches).
READ_ROWS = 65_536


class Tables:
    """The three tables of a bundle and its meta.

    ``requests``/``steps``/``samples`` are the whole tables (Arrow, every segment concatenated,
    steps' ``request_ids`` dictionary-encoded), read on first use. The analysis itself reads
    :meth:`lean` (the table without :data:`HEAVY_COLUMNS`) and the heavy columns :meth:`chunks`
    at a time, so a large bundle's per-token and per-sequence lists are never all in memory.
    Every read of a bundle sees the segments that were there at its first read.
    """

    def __init__(
        self,
        meta: dict[str, Any],
        requests: pa.Table | None = None,
        steps: pa.Table | None = None,
        samples: pa.Table | None = None,
        path: str = "",
        warnings: list[str] | None = None,
        bundle: Bundle | None = None,
    ) -> None:
        self.meta = meta
        self.path = path
        self.warnings = list(warnings or [])
        self.bundle = bundle
        self._full: dict[str, pa.Table] = {}
        self._lean: dict[str, pa.Table] = {}
        self._segments: dict[str, list] = {}
        for name, table in (("requests", requests), ("steps", steps), ("samples", samples)):
            if table is not None:
                self._full[name] = table
            elif bundle is None:
                self._full[name] = schema_for(name).empty_table()

    @property
    def requests(self) -> pa.Table:
        return self.table("requests")

    @property
    def steps(self) -> pa.Table:
        return self.table("steps")

    @property
    def samples(self) -> pa.Table:
        return self.table("samples")

    def _read(self, fn: Any) -> Any:
        try:
            return fn()
        except (pa.ArrowInvalid, OSError) as exc:
            raise BundleError(f"{self.path}: cannot read ({exc})") from exc

    def _segs(self, name: str) -> list:
        if name not in self._segments:
            self._segments[name] = self.bundle.segments(name)
        return self._segments[name]

    def table(self, name: str) -> pa.Table:
        """The whole table (read once, then kept)."""
        if name not in self._full:
            dictionary = DICTIONARY_COLUMNS.get(name, ())
            self._full[name] = self._read(
                lambda: self.bundle.table(name, dictionary=dictionary, segments=self._segs(name))
            )
            self.warnings += [w for w in self.bundle.warnings if w not in self.warnings]
        return self._full[name]

    def lean(self, name: str) -> pa.Table:
        """The table without its :data:`HEAVY_COLUMNS` and :data:`UNUSED_COLUMNS` (read once, then kept)."""
        if name not in self._lean:
            heavy = HEAVY_COLUMNS[name] + UNUSED_COLUMNS.get(name, ())
            if name in self._full:
                full = self._full[name]
                self._lean[name] = full.drop_columns([c for c in heavy if c in full.column_names])
            else:
                cols = [c for c in schema_for(name).names if c not in heavy]
                self._lean[name] = self._read(lambda: self.bundle.table(name, columns=cols, segments=self._segs(name)))
                self.warnings += [w for w in self.bundle.warnings if w not in self.warnings]
        return self._lean[name]

    def forget(self, name: str) -> None:
        """Drop the kept :meth:`lean` table of a bundle-backed table (read again when next asked for)."""
        if self.bundle is not None:
            self._lean.pop(name, None)

    def chunks(self, name: str, columns: Sequence[str], rows: int) -> Iterator[pa.Table]:
        """``columns`` of the table about ``rows`` rows at a time, in row order (the rows of
        :meth:`lean`); string lists listed in :data:`DICTIONARY_COLUMNS` come dictionary-encoded."""
        rows = max(int(rows), 1)
        if name in self._full or self.bundle is None:
            t = self.table(name).select(list(columns))
            for start in range(0, t.num_rows, rows):
                yield t.slice(start, rows)
            return
        dictionary = [c for c in DICTIONARY_COLUMNS.get(name, ()) if c in columns]
        # Segments are read whole (much faster than small batches) unless they are large, and
        # handed out in slices of ``rows``.
        read_rows = max(rows, READ_ROWS)
        pieces = self.bundle.iter_table(name, columns, dictionary, batch_rows=read_rows, segments=self._segs(name))
        pending: list[pa.Table] = []
        n = 0
        try:
            for piece in pieces:
                pending.append(piece)
                n += piece.num_rows
                if n < rows:
                    continue
                whole = pa.concat_tables(pending) if len(pending) > 1 else pending[0]
                pending, n = [], 0
                full = whole.num_rows - whole.num_rows % rows
                for start in range(0, full, rows):
                    yield whole.slice(start, rows)
                if full < whole.num_rows:
                    pending, n = [whole.slice(full)], whole.num_rows - full
                # Arrow's allocator keeps the freed pages of a piece and reuses them for the next
                # (handing them back after every piece cost more CPU in page faults than the
                # reading, and did not lower the analysis's peak); the passes release() at their end.
                del whole
        except (pa.ArrowInvalid, OSError) as exc:
            raise BundleError(f"{self.path}: cannot read ({exc})") from exc
        if pending:
            yield pa.concat_tables(pending) if len(pending) > 1 else pending[0]

    @property
    def capabilities(self) -> dict[str, bool]:
        requests, steps, samples = self.lean("requests"), self.lean("steps"), self.lean("samples")
        caps = dict(self.meta.get("capabilities") or {})
        caps.setdefault("steps", steps.num_rows > 0)
        caps.setdefault("samples", samples.num_rows > 0)
        caps.setdefault(
            "streaming",
            bool(requests.num_rows) and requests.column("last_byte_ns").null_count < requests.num_rows,
        )
        caps["steps"] = bool(caps["steps"]) and steps.num_rows > 0
        caps["samples"] = bool(caps["samples"]) and samples.num_rows > 0
        return caps


def release() -> None:
    """Hand the pages Arrow's pool keeps for reuse back to the system (``release_unused``).

    Called between the passes. The C heap (numpy's arrays) is not trimmed: at 1M requests
    ``malloc_trim`` after every pass cost 35-60k more page faults (0.5-1.5 s of system time)
    for 0-15 MiB less peak.
    """
    pa.default_memory_pool().release_unused()


def load(bundle_or_path: Bundle | Tables | str | os.PathLike[str]) -> Tables:
    """Open a bundle (path or :class:`Bundle`) and read its tables but the heavy columns
    (:meth:`Tables.lean`); raises BundleError on bad data."""
    if isinstance(bundle_or_path, Tables):
        return bundle_or_path
    bundle = bundle_or_path if isinstance(bundle_or_path, Bundle) else read_bundle(bundle_or_path)
    t = Tables(meta=bundle.meta, path=str(bundle.path), warnings=list(bundle.warnings), bundle=bundle)
    for name in TABLE_NAMES:
        t.lean(name)
    release()  # the Parquet reader's buffers
    return t


# Sample sources that describe one serving instance (its engine series); every other source
# (agent, dcgm-exporter, node-exporter) describes the host it runs on.
ENGINE_SOURCES = ("prometheus:vllm",)


class UnknownInstance(ValueError):
    """An ``instance`` that no request of the bundle names."""


def host_of(instance: str | None) -> str | None:
    """The host part of an instance name (``host:port`` as Prometheus labels it)."""
    if instance is None:
        return None
    host, sep, port = instance.rpartition(":")
    return host if sep and port.isdigit() else instance


def instances(tables: Tables) -> list[str]:
    """Serving instances named in the requests table (nulls left out)."""
    col = tables.lean("requests").column("instance")
    return sorted(v for v in pc.unique(col).to_pylist() if v is not None) if len(col) else []


def for_instance(tables: Tables, instance: str) -> Tables:
    """The tables of one serving instance: its requests and steps, the samples labelled with it,
    and the host-level samples (any source but :data:`ENGINE_SOURCES`) of the same host.

    ``meta["instance"]`` names the instance. Raises :class:`UnknownInstance` (a ValueError) for
    an instance no request names.
    """
    known = instances(tables)
    if instance not in known:
        raise UnknownInstance(f"instance {instance!r} is not in this bundle (instances: {', '.join(known) or 'none'})")

    def col(t: pa.Table, name: str) -> np.ndarray:
        return np.asarray(t.column(name).to_numpy(zero_copy_only=False), dtype=object)

    s_inst = col(tables.samples, "instance")
    host = host_of(instance)
    s_host = np.array([host_of(i) for i in s_inst], dtype=object)
    host_level = ~np.isin(col(tables.samples, "source"), ENGINE_SOURCES)
    keep = (s_inst == instance) | (host_level & (s_host == host))
    meta = dict(tables.meta)
    meta["instance"] = instance

    def where(t: pa.Table, mask: np.ndarray) -> pa.Table:
        return t.filter(pa.array(np.asarray(mask, dtype=bool)))

    return Tables(
        meta=meta,
        path=tables.path,
        warnings=tables.warnings,
        requests=where(tables.requests, col(tables.requests, "instance") == instance),
        steps=where(tables.steps, col(tables.steps, "instance") == instance),
        samples=where(tables.samples, keep),
    )


def ns(table: pa.Table, name: str) -> np.ndarray:
    """An int64 ns column as numpy, nulls as NA_NS."""
    col = table.column(name)
    return to_np(col, NA_NS, np.int64)


def f64(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64 numpy, nulls as NaN."""
    col = table.column(name)
    if not len(col):
        return np.empty(0, np.float64)
    return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def strings(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_pylist(), dtype=object)


def to_np(arr: pa.Array | pa.ChunkedArray, fill: Any, dtype: Any) -> np.ndarray:
    """Arrow -> numpy of ``dtype``, nulls replaced by ``fill`` (skips the fill when there are none)."""
    if len(arr) == 0:
        return np.empty(0, dtype)
    if arr.null_count:
        arr = pc.fill_null(arr, fill)
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=dtype)


def workload_classes(requests: pa.Table) -> pd.Series:
    """Each request's workload class, ``"default"`` where it has none."""
    return pc.fill_null(requests.column("workload_class"), "default").to_pandas()


def flat_list(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Flatten a list column: (values, parent row index)."""
    col = table.column(name)  # chunked: parent indices are global across chunks
    if not len(col):
        return np.empty(0), np.empty(0, np.int64)
    values = pc.list_flatten(col)
    parent = to_np(pc.list_parent_indices(col), 0, np.int64)
    return values, parent


def flat_values(table: pa.Table, name: str) -> pa.Array:
    """The flattened values of a list column (no parent indices)."""
    col = table.column(name)
    return pc.list_flatten(col) if len(col) else pa.array([], col.type.value_type)
