"""The common data layer: open a bundle once and hand the analyses Arrow tables and numpy arrays.

Times stay int64 nanoseconds; nulls become ``NA_NS`` (the int64 minimum) or ``NaN``
in float arrays, never zero.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bottleneck_map.bundle import Bundle, BundleError, read_bundle

NA_NS = np.iinfo(np.int64).min
TABLE_NAMES = ("requests", "steps", "samples")
# Read dictionary-encoded: a step's request ids repeat every id once per step it was in (tens of
# millions of strings in a large bundle); as codes into each segment's distinct ids they cost
# 4 bytes each and join to the requests table without hashing every one (stages.step_membership).
DICTIONARY_COLUMNS = {"steps": ("request_ids",)}


@dataclass
class Tables:
    """The three tables of a bundle (Arrow, every segment concatenated) and its meta."""

    meta: dict[str, Any]
    requests: pa.Table
    steps: pa.Table
    samples: pa.Table
    path: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def capabilities(self) -> dict[str, bool]:
        caps = dict(self.meta.get("capabilities") or {})
        caps.setdefault("steps", self.steps.num_rows > 0)
        caps.setdefault("samples", self.samples.num_rows > 0)
        caps.setdefault(
            "streaming",
            bool(self.requests.num_rows) and self.requests.column("last_byte_ns").null_count < self.requests.num_rows,
        )
        caps["steps"] = bool(caps["steps"]) and self.steps.num_rows > 0
        caps["samples"] = bool(caps["samples"]) and self.samples.num_rows > 0
        return caps


def load(bundle_or_path: Bundle | Tables | str | os.PathLike[str]) -> Tables:
    """Open a bundle (path or :class:`Bundle`) and read its tables; raises BundleError on bad data."""
    if isinstance(bundle_or_path, Tables):
        return bundle_or_path
    bundle = bundle_or_path if isinstance(bundle_or_path, Bundle) else read_bundle(bundle_or_path)
    try:
        tables = {name: bundle.table(name, dictionary=DICTIONARY_COLUMNS.get(name, ())) for name in TABLE_NAMES}
    except (pa.ArrowInvalid, OSError) as exc:
        raise BundleError(f"{bundle.path}: cannot read ({exc})") from exc
    return Tables(
        meta=bundle.meta,
        path=str(bundle.path),
        warnings=list(bundle.warnings),
        **tables,
    )


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
    col = tables.requests.column("instance")
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

    return replace(
        tables,
        meta=meta,
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
