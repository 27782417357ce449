"""The trace bundle: a directory of ``meta.json`` and append-only Parquet segments.

Producers (engine, agent, ingest) write with :class:`BundleWriter`; the analyzer
and the dashboard read with :func:`read_bundle`. The layout is plain enough that
``pandas.read_parquet(bundle / "steps")`` reads a table without this module.

Layout::

    BUNDLE/meta.json
    BUNDLE/requests/part-<writer>-<seq>.parquet
    BUNDLE/steps/part-<writer>-<seq>.parquet
    BUNDLE/samples/part-<writer>-<seq>.parquet

Each segment is written to a hidden temporary file and renamed into place, so a
reader never sees half a segment; a crash loses at most the rows buffered since
the last flush.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bottleneck_map.schema import SCHEMA_VERSION, SCHEMAS, TABLES, schema_for

META_FILE = "meta.json"
_SEGMENT_RE = re.compile(r"^part-(?P<writer>[A-Za-z0-9]+)-(?P<seq>\d+)\.parquet$")


class BundleError(Exception):
    """A bundle that cannot be read: the message names the file and the field."""


class BundleWarning(UserWarning):
    """Something in a bundle was skipped or repaired while reading."""


def clock_description() -> dict[str, Any]:
    """Describe the clock bundle times are on: CLOCK_MONOTONIC, with its Unix-time origin."""
    return {
        "kind": "monotonic",
        "unit": "ns",
        "origin_monotonic_ns": time.monotonic_ns(),
        "origin_unix_ns": time.time_ns(),
    }


def now_ns() -> int:
    """Current time on the bundle clock."""
    return time.monotonic_ns()


def new_meta(producer: str, **sections: Any) -> dict[str, Any]:
    """A fresh ``meta.json`` document; ``sections`` (model, engine, device, ...) are added as given."""
    meta: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8],
        "producer": producer,
        "created_unix_ns": time.time_ns(),
        "clock": clock_description(),
        "host": {"hostname": socket.gethostname(), "cpu_count": os.cpu_count()},
    }
    meta.update(sections)
    return meta


def _write_json_atomic(path: Path, doc: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def _segment_sort_key(path: Path) -> tuple[str, int]:
    m = _SEGMENT_RE.match(path.name)
    assert m is not None
    return (m["writer"], int(m["seq"]))


def _inside(root: Path, path: Path) -> bool:
    """``path``, with every link followed, is ``root`` or below it (``root`` already resolved)."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a link loop
        return False


def segment_paths(bundle: Path, table: str) -> list[Path]:
    """Segments of one table, ordered by writer then sequence number.

    A bundle is read only inside its own directory: a table folder or segment that is a link
    leading outside the bundle is an error (BundleError), as is a table folder that is a file
    or a segment that is not a regular file. Links that stay inside the bundle are followed."""
    root = Path(bundle).resolve()
    folder = Path(bundle) / table
    if not folder.exists() and not folder.is_symlink():
        return []
    if not _inside(root, folder):
        raise BundleError(f"{folder}: a link that leads outside the bundle; such links are not followed")
    if not folder.is_dir():
        raise BundleError(f"{folder}: not a directory (a table is a directory of Parquet segments)")
    found = []
    for p in folder.iterdir():
        if not _SEGMENT_RE.match(p.name):
            continue
        if not _inside(root, p):
            raise BundleError(f"{p}: a link that leads outside the bundle; such links are not followed")
        if not p.is_file():
            raise BundleError(f"{p}: not a regular file")
        found.append(p)
    return sorted(found, key=_segment_sort_key)


class BundleWriter:
    """Append rows to a bundle from any thread; segments are flushed every
    ``flush_interval_s`` seconds or ``flush_rows`` rows, whichever comes first.

    ``meta=None`` appends to an existing bundle (for example an agent joining a
    run), leaving its ``meta.json`` alone.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        meta: Mapping[str, Any] | None,
        *,
        flush_interval_s: float = 2.0,
        flush_rows: int = 20_000,
        tables: Iterable[str] = TABLES,
    ) -> None:
        if flush_interval_s <= 0:
            raise ValueError(f"flush_interval_s must be positive, got {flush_interval_s}")
        if flush_rows <= 0:
            raise ValueError(f"flush_rows must be positive, got {flush_rows}")
        self.path = Path(path)
        self.flush_interval_s = flush_interval_s
        self.flush_rows = flush_rows
        self.writer_id = uuid.uuid4().hex[:12]
        self._tables = tuple(tables)
        for t in self._tables:
            schema_for(t)
        # per table, in call order: row mappings and column batches (``_Columns``)
        self._buffers: dict[str, list[Mapping[str, Any] | _Columns]] = {t: [] for t in self._tables}
        self._pending = {t: 0 for t in self._tables}  # rows buffered per table
        self._seq = 0
        self._rows_written = {t: 0 for t in self._tables}
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self.path.mkdir(parents=True, exist_ok=True)
        for t in self._tables:
            (self.path / t).mkdir(exist_ok=True)
        meta_path = self.path / META_FILE
        self._owns_meta = meta is not None
        if meta is not None:
            self.meta: dict[str, Any] = dict(meta)
            self.meta.setdefault("schema_version", SCHEMA_VERSION)
            _write_json_atomic(meta_path, self.meta)
        elif meta_path.exists():
            self.meta = read_meta(self.path)
        else:
            raise BundleError(f"{meta_path}: missing; pass meta= to create a new bundle")
        self._flusher = threading.Thread(target=self._flush_loop, name="bundle-flusher", daemon=True)
        self._flusher.start()

    # -- appending -------------------------------------------------------
    def append(self, table: str, row: Mapping[str, Any]) -> None:
        """Buffer one row (a mapping of column name to value) for ``table``."""
        self.extend(table, (row,))

    def extend(self, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Buffer rows (mappings of column name to value) for ``table``."""
        self._buffer(table, list(rows))

    def extend_columns(self, table: str, columns: Mapping[str, Sequence[Any]]) -> None:
        """Buffer rows given column-wise: ``columns`` maps column names to sequences of
        one length (a column left out is null in every row). Producers that already hold
        their data as columns skip building one dict per row, and the batch is converted
        to Arrow a column at a time when flushed. Rows that do not fit the schema are
        dropped with a warning at flush, as with :meth:`extend`; unknown column names
        and columns of different lengths raise ``ValueError`` here."""
        schema = self._schema(table)
        unknown = [name for name in columns if schema.get_field_index(name) < 0]
        if unknown:
            raise ValueError(f"table {table!r} has no column(s) {', '.join(map(repr, unknown))}")
        lengths = {len(values) for values in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns for table {table!r} have different lengths {sorted(lengths)}")
        n = lengths.pop() if lengths else 0
        if n:
            self._buffer(table, [_Columns(n, {name: list(values) for name, values in columns.items()})])

    def _schema(self, table: str) -> pa.Schema:
        if table not in self._buffers:
            raise ValueError(f"this writer does not write table {table!r}")
        return SCHEMAS[table]

    def _buffer(self, table: str, items: list[Mapping[str, Any] | _Columns]) -> None:
        self._schema(table)
        n = sum(item.num_rows if isinstance(item, _Columns) else 1 for item in items)
        with self._lock:
            if self._closed:
                raise BundleError(f"{self.path}: writer is closed")
            self._buffers[table].extend(items)
            self._pending[table] += n
            full = self._pending[table] >= self.flush_rows
        if full:
            self.flush(table)

    def add_request(self, row: Mapping[str, Any]) -> None:
        self.append("requests", row)

    def add_step(self, row: Mapping[str, Any]) -> None:
        self.append("steps", row)

    def add_sample(self, row: Mapping[str, Any]) -> None:
        self.append("samples", row)

    # -- flushing --------------------------------------------------------
    def flush(self, table: str | None = None) -> None:
        """Write buffered rows as new segments (all tables, or one)."""
        with self._io_lock:
            for t in (table,) if table else self._tables:
                with self._lock:
                    rows, self._buffers[t] = self._buffers[t], []
                    self._pending[t] = 0
                    if not rows:
                        continue
                    self._seq += 1
                    seq = self._seq
                self._write_segment(t, rows, seq)

    def _write_segment(self, table: str, rows: list[Mapping[str, Any] | _Columns], seq: int) -> None:
        arrow = _items_to_table(table, rows)
        if arrow.num_rows == 0:
            return
        name = f"part-{self.writer_id}-{seq:06d}.parquet"
        final = self.path / table / name
        tmp = final.with_name(f".{name}.tmp")
        pq.write_table(arrow, tmp, compression="zstd", use_dictionary=_dictionary_columns(table))
        os.replace(tmp, final)
        self._rows_written[table] += arrow.num_rows

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            try:
                self.flush()
            except Exception as exc:  # never let the background flusher die silently
                warnings.warn(f"bundle flush failed: {exc}", BundleWarning, stacklevel=1)

    def update_meta(self, **sections: Any) -> None:
        """Merge sections into ``meta.json`` and rewrite it atomically."""
        with self._lock:
            self.meta.update(sections)
            _write_json_atomic(self.path / META_FILE, self.meta)

    @property
    def rows_written(self) -> dict[str, int]:
        return dict(self._rows_written)

    def close(self, *, end_meta: bool = True) -> None:
        """Flush everything; the writer that created ``meta.json`` also records the end time."""
        if self._closed:
            return
        self._stop.set()
        self._flusher.join()
        self.flush()
        with self._lock:
            self._closed = True
        if end_meta and self._owns_meta:
            self.meta["end_ns"] = now_ns()
            _write_json_atomic(self.path / META_FILE, self.meta)

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class _Columns:
    """A batch of rows held column-wise (``BundleWriter.extend_columns``)."""

    num_rows: int
    columns: dict[str, list[Any]]

    def rows(self) -> list[dict[str, Any]]:
        names = list(self.columns)
        return [dict(zip(names, values, strict=True)) for values in zip(*self.columns.values(), strict=True)]


def _to_arrow(schema: pa.Schema, rows: list[Mapping[str, Any]]) -> pa.Table:
    table = pa.Table.from_pylist(rows, schema=schema)
    for fld in schema:
        if not fld.nullable and table.column(fld.name).null_count:
            raise ValueError(f"required field {fld.name!r} is null")
    return table


_ROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError)


def _rows_to_table(table: str, rows: list[Mapping[str, Any]]) -> pa.Table:
    """Convert rows; a row that does not fit the schema is dropped with a warning
    naming its table and reason, and every other row is kept."""
    schema = SCHEMAS[table]
    try:
        return _to_arrow(schema, rows)
    except _ROW_ERRORS:
        pass
    good = []
    for row in rows:
        try:
            _to_arrow(schema, [row])
        except _ROW_ERRORS as exc:
            warnings.warn(f"{table}: dropped a row that does not fit the schema: {exc}", BundleWarning, stacklevel=4)
            continue
        good.append(row)
    return _to_arrow(schema, good)


def unfit_rows(table: str, rows: Sequence[Mapping[str, Any]]) -> list[tuple[int, str]]:
    """The rows that the writer would drop at flush, as (index, reason naming the field).

    Producers that acknowledge rows to a client call this before buffering them, so a
    row is refused while its sender can still hear about it. Unknown keys are ignored
    (as the writer ignores them)."""
    schema = SCHEMAS[table]
    try:
        _to_arrow(schema, list(rows))
        return []
    except _ROW_ERRORS:
        pass
    bad = []
    for i, row in enumerate(rows):
        for fld in schema:
            value = row.get(fld.name)
            try:
                if value is None:
                    if not fld.nullable:
                        raise ValueError("is required")
                    continue
                pa.array([value], type=fld.type)
            except _ROW_ERRORS as exc:
                why = _shorten(str(exc) or type(exc).__name__)
                bad.append((i, f"field {fld.name} = {_shorten(repr(value), 60)} does not fit {fld.type} ({why})"))
                break
    return bad


def _shorten(text: str, n: int = 120) -> str:
    return text if len(text) <= n else text[:n] + "..."


def _columns_to_table(table: str, batches: list[_Columns]) -> pa.Table:
    """Consecutive column batches as one table, converted a column at a time; when a
    value does not fit, the batches go through the row path, which drops only the
    rows that do not fit."""
    schema = SCHEMAS[table]
    try:
        arrays = []
        for fld in schema:
            values: list[Any] = []
            for b in batches:
                col = b.columns.get(fld.name)
                values.extend(col if col is not None else (None,) * b.num_rows)
            arr = pa.array(values, type=fld.type)
            if not fld.nullable and arr.null_count:
                raise ValueError(f"required field {fld.name!r} is null")
            arrays.append(arr)
        return pa.Table.from_arrays(arrays, schema=schema)
    except _ROW_ERRORS:
        return _rows_to_table(table, [row for b in batches for row in b.rows()])


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or (pa.types.is_list(t) and pa.types.is_string(t.value_type))


@functools.cache
def _dictionary_columns(table: str) -> list[str]:
    """Columns written dictionary-encoded: text (ids, names, classes, the steps' request id
    lists), which repeats and is read back as dictionaries. Numeric columns are written plain:
    their values rarely repeat, and trying a dictionary for them first made a segment slower to
    write and larger (measured on agent samples: 5.0 -> 3.6 ms and 155 -> 131 kB per 2,000 rows)."""
    return [
        f.name if pa.types.is_string(f.type) else f"{f.name}.list.element" for f in SCHEMAS[table] if _is_text(f.type)
    ]


def _items_to_table(table: str, items: list[Mapping[str, Any] | _Columns]) -> pa.Table:
    """Buffered rows and column batches, in the order they were added, as one table."""
    parts: list[pa.Table] = []
    run: list[Any] = []
    for item in [*items, None]:  # None ends the last run
        if run and (item is None or isinstance(item, _Columns) != isinstance(run[0], _Columns)):
            parts.append(_columns_to_table(table, run) if isinstance(run[0], _Columns) else _rows_to_table(table, run))
            run = []
        if item is not None:
            run.append(item)
    if len(parts) == 1:
        return parts[0]
    return pa.concat_tables(parts) if parts else SCHEMAS[table].empty_table()


# -- reading -------------------------------------------------------------


MAX_META_BYTES = 16 * 1024 * 1024
# meta.json sections that are JSON objects whenever present
META_OBJECTS = ("clock", "host", "device", "model", "engine", "workload", "capabilities", "injected", "ingest")
META_INTS = ("created_unix_ns", "end_ns")


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``meta.json`` of a bundle, checked: a regular file inside the bundle, UTF-8 JSON, an object
    of the known schema version whose sections have their documented types. Raises BundleError
    naming the file and the field."""
    meta_path = Path(path) / META_FILE
    if not Path(path).is_dir():
        raise BundleError(f"{path}: not a directory (a bundle is a directory with {META_FILE})")
    if not meta_path.exists():
        raise BundleError(f"{meta_path}: missing; {path} is not a bundle")
    if not _inside(Path(path).resolve(), meta_path):
        raise BundleError(f"{meta_path}: a link that leads outside the bundle; such links are not followed")
    if not meta_path.is_file():
        raise BundleError(f"{meta_path}: not a regular file")
    try:
        size = meta_path.stat().st_size
        if size > MAX_META_BYTES:
            raise BundleError(f"{meta_path}: {size} bytes, more than the {MAX_META_BYTES} a meta.json may have")
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise BundleError(f"{meta_path}: cannot be read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise BundleError(f"{meta_path}: not valid UTF-8 ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise BundleError(f"{meta_path}: not valid JSON ({exc})") from exc
    except RecursionError:
        raise BundleError(f"{meta_path}: JSON nested too deeply") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path}: expected a JSON object")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{meta_path}: field schema_version is {version!r}; this version of bottleneck-map reads {SCHEMA_VERSION}"
        )
    if not isinstance(meta.get("clock"), dict):
        raise BundleError(f"{meta_path}: field clock is missing or not an object")
    for key in META_OBJECTS:
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise BundleError(f"{meta_path}: field {key} is {_shorten(repr(meta[key]), 40)}, expected an object")
    for key in META_INTS:
        v = meta.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise BundleError(f"{meta_path}: field {key} is {_shorten(repr(v), 40)}, expected an integer")
    return meta


def _dictionary_type(typ: pa.DataType, name: str) -> pa.DataType:
    """``typ`` with its strings dictionary-encoded (string, or list of string); ValueError otherwise."""
    code = pa.dictionary(pa.int32(), pa.string())
    if pa.types.is_string(typ) or typ == code:
        return code
    if pa.types.is_list(typ) and (pa.types.is_string(typ.value_type) or typ.value_type == code):
        return pa.list_(typ.value_field.with_type(code))
    raise ValueError(f"column {name!r} of type {typ} cannot be read dictionary-encoded (strings only)")


def _is_dictionary_of(expected: pa.DataType, actual: pa.DataType) -> bool:
    """``expected`` is the dictionary-encoded form of ``actual`` (string, or list of string)."""
    code = pa.dictionary(pa.int32(), pa.string())
    if expected == code:
        return pa.types.is_string(actual)
    return (
        pa.types.is_list(expected)
        and expected.value_type == code
        and pa.types.is_list(actual)
        and pa.types.is_string(actual.value_type)
    )


def _conform(table: pa.Table, schema: pa.Schema, source: Path) -> pa.Table:
    """Check a segment against the schema: missing nullable columns become null,
    unknown columns are dropped, a column of the wrong type is an error."""
    columns = []
    for fld in schema:
        idx = table.schema.get_field_index(fld.name)
        if idx < 0:
            if not fld.nullable:
                raise BundleError(f"{source}: required field {fld.name!r} is missing")
            columns.append(pa.nulls(table.num_rows, fld.type))
            continue
        col = table.column(idx)
        if col.type != fld.type:
            if pa.types.is_null(col.type):
                col = pa.nulls(table.num_rows, fld.type)
            elif _is_dictionary_of(fld.type, col.type):
                col = col.cast(fld.type)  # a dictionary-encoded read that Parquet returned plain
            else:
                raise BundleError(f"{source}: field {fld.name!r} has type {col.type}, expected {fld.type}")
        if not fld.nullable and col.null_count:
            raise BundleError(f"{source}: field {fld.name!r} has {col.null_count} null values but is required")
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


@dataclass
class Bundle:
    """A bundle opened for reading. Tables load lazily and are cached."""

    path: Path
    meta: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    _tables: dict[str, pa.Table] = field(default_factory=dict, repr=False)

    def table(
        self,
        name: str,
        columns: Sequence[str] | None = None,
        dictionary: Sequence[str] = (),
        segments: Sequence[Path] | None = None,
    ) -> pa.Table:
        """One table as Arrow, every segment concatenated (empty table when absent).

        ``columns`` reads only those columns (in schema order). ``dictionary`` names string
        columns, or lists of strings, to read dictionary-encoded (Parquet ``read_dictionary``):
        each segment then holds its distinct strings once and int32 codes into them, instead
        of one string per value (step ``request_ids`` repeat every id once per step). Such a
        column's type is ``dictionary<int32, string>`` (or a list of it); every segment is one
        chunk with its own dictionary. ``segments`` (from :meth:`segments`) reads those segment
        files only. Without options the result is cached per table.
        """
        schema = schema_for(name)
        if segments is not None:
            parts = list(self.iter_table(name, columns, dictionary, segments=segments))
            if not parts:
                wanted = set(schema.names if columns is None else columns)
                return _read_schema(schema, wanted, dictionary).empty_table()
            return pa.concat_tables(parts)
        if columns is None and not dictionary:
            if name not in self._tables:
                self._tables[name] = self._load(name, schema)
            return self._tables[name]
        wanted = set(schema.names if columns is None else columns)
        unknown = wanted.union(dictionary) - set(schema.names)
        if unknown:
            raise ValueError(f"table {name!r} has no column(s) {', '.join(sorted(map(repr, unknown)))}")
        return self._load(name, _read_schema(schema, wanted, dictionary), tuple(dictionary))

    def segments(self, name: str) -> list[Path]:
        """The segment files of one table now, in read order (for :meth:`table` and :meth:`iter_table`)."""
        return segment_paths(self.path, name)

    def iter_table(
        self,
        name: str,
        columns: Sequence[str] | None = None,
        dictionary: Sequence[str] = (),
        batch_rows: int | None = None,
        segments: Sequence[Path] | None = None,
    ) -> Iterator[pa.Table]:
        """The table piece by piece, in the row order of :meth:`table`: one table per segment, or
        per ``batch_rows`` rows of a larger one (``ParquetFile.iter_batches``), with the
        ``columns`` and ``dictionary`` options of :meth:`table`. ``segments`` fixes the files read
        (two reads of a bundle still being written then see the same rows). A corrupt newest
        segment of a writer is skipped with a warning, as :meth:`table` does, when it cannot be
        opened; one that fails part-way raises BundleError."""
        base = schema_for(name)
        wanted = set(base.names if columns is None else columns)
        unknown = wanted.union(dictionary) - set(base.names)
        if unknown:
            raise ValueError(f"table {name!r} has no column(s) {', '.join(sorted(map(repr, unknown)))}")
        schema = _read_schema(base, wanted, dictionary)
        read_dictionary = [p for c in dictionary for p in (c, f"{c}.list.element", f"{c}.list.item")] or None
        paths = list(self.segments(name) if segments is None else segments)
        newest = {_segment_sort_key(p)[0]: p for p in paths}
        for p in paths:
            first = True
            try:
                md = pq.read_metadata(p)
                leaves = {md.schema.column(i).path for i in range(md.num_columns)}
                rd = [c for c in read_dictionary or () if c in leaves] or None
                f = pq.ParquetFile(p, metadata=md, read_dictionary=rd)
                present = set(f.schema_arrow.names)
                cols = [c for c in schema.names if c in present]
                if batch_rows is None or f.metadata.num_rows <= batch_rows:
                    pieces: Iterable[pa.Table] = [f.read(columns=cols)]
                else:
                    pieces = (pa.Table.from_batches([b]) for b in f.iter_batches(batch_size=batch_rows, columns=cols))
                for raw in pieces:
                    first = False
                    yield _conform(raw, schema, p)
            except (pa.ArrowInvalid, OSError) as exc:
                if first and newest.get(_segment_sort_key(p)[0]) == p:
                    msg = f"{p}: truncated or corrupt last segment skipped ({exc})"
                    self.warnings.append(msg)
                    warnings.warn(msg, BundleWarning, stacklevel=2)
                    continue
                raise BundleError(f"{p}: corrupt segment ({exc})") from exc

    def frame(self, name: str) -> pd.DataFrame:
        return self.table(name).to_pandas()

    @property
    def requests(self) -> pd.DataFrame:
        return self.frame("requests")

    @property
    def steps(self) -> pd.DataFrame:
        return self.frame("steps")

    @property
    def samples(self) -> pd.DataFrame:
        return self.frame("samples")

    @property
    def closed(self) -> bool:
        """True when the producer closed the bundle cleanly (``end_ns`` in meta)."""
        return "end_ns" in self.meta

    def _load(self, name: str, schema: pa.Schema, dictionary: tuple[str, ...] = ()) -> pa.Table:
        columns = None if schema.names == schema_for(name).names else schema.names
        # Parquet paths of the dictionary columns: the column itself, or a list's element (either name).
        read_dictionary = [p for c in dictionary for p in (c, f"{c}.list.element", f"{c}.list.item")] or None
        paths = segment_paths(self.path, name)
        newest = {}
        for p in paths:
            newest[_segment_sort_key(p)[0]] = p
        parts = []
        for p in paths:
            try:
                if columns is None:
                    raw = pq.read_table(p, read_dictionary=read_dictionary)
                else:
                    present = set(pq.read_schema(p).names)
                    raw = pq.read_table(
                        p, columns=[c for c in columns if c in present], read_dictionary=read_dictionary
                    )
            except (pa.ArrowInvalid, OSError) as exc:
                if newest.get(_segment_sort_key(p)[0]) == p:
                    msg = f"{p}: truncated or corrupt last segment skipped ({exc})"
                    self.warnings.append(msg)
                    warnings.warn(msg, BundleWarning, stacklevel=3)
                    continue
                raise BundleError(f"{p}: corrupt segment ({exc})") from exc
            parts.append(_conform(raw, schema, p))
        if not parts:
            return schema.empty_table()
        return pa.concat_tables(parts)


def _read_schema(schema: pa.Schema, wanted: set[str], dictionary: Sequence[str]) -> pa.Schema:
    """``schema`` restricted to ``wanted`` (in schema order), the ``dictionary`` columns encoded."""
    fields = []
    for fld in schema:
        if fld.name not in wanted:
            continue
        if fld.name in dictionary:
            fld = fld.with_type(_dictionary_type(fld.type, fld.name))
        fields.append(fld)
    return pa.schema(fields, metadata=schema.metadata)


def read_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Open a bundle: reads and checks ``meta.json`` now, the tables on first use."""
    p = Path(path)
    return Bundle(path=p, meta=read_meta(p))
