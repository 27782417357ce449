"""Chunked processing: reading and reducing the steps' and requests' lists a chunk at a time gives
the same analysis as one chunk, whatever the chunk size and the segment layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bottleneck_map.analyzer import analyze, analyze_full, api, request_stages
from bottleneck_map.analyzer.latency import GapPool, pooled_gaps
from bottleneck_map.analyzer.steprows import RequestLookup
from bottleneck_map.bundle import read_bundle, segment_paths

ONE_CHUNK = 10**9
FRAMES = ("stages", "metrics", "roofline", "steps", "attributed", "timeline")


def _resegment(path, rows: int) -> None:
    """Rewrite every table of a bundle as segments of ``rows`` rows (the layout a busy writer leaves)."""
    b = read_bundle(path)
    for name in ("requests", "steps", "samples"):
        table = b.table(name)
        for p in segment_paths(path, name):
            p.unlink()
        for seq, start in enumerate(range(0, table.num_rows, rows), 1):
            pq.write_table(table.slice(start, rows), path / name / f"part-test0000-{seq:06d}.parquet")


def _same_frames(a, b) -> None:
    for name in FRAMES:
        x, y = getattr(a, name), getattr(b, name)
        assert list(x.columns) == list(y.columns), name
        for c in x.columns:
            u, v = x[c], y[c]
            if u.dtype.kind in "fiub" and v.dtype.kind in "fiub":
                np.testing.assert_allclose(
                    u.to_numpy(float), v.to_numpy(float), rtol=1e-9, atol=1e-6, err_msg=f"{name}.{c}"
                )
            else:
                assert u.astype(object).tolist() == v.astype(object).tolist(), f"{name}.{c}"


def _same_maps(a, b) -> None:
    def walk(x, y, where):
        if isinstance(x, dict):
            assert x.keys() == y.keys(), where
            for k in x:
                walk(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, list):
            assert len(x) == len(y), where
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                walk(u, v, f"{where}[{i}]")
        elif isinstance(x, float) and isinstance(y, float):
            assert x == pytest.approx(y, rel=1e-9, abs=1e-12), where
        else:
            assert x == y, where

    walk(a.to_dict(), b.to_dict(), "map")


@pytest.mark.parametrize(
    "sim",
    [
        {"preemption_mode": "recompute", "num_kv_blocks": 30, "n_requests": 30, "rate_per_s": 200.0},
        {"preemption_mode": "swap", "num_kv_blocks": 30, "swap_ns_per_block": 20_000, "n_requests": 30},
        {"throttle": True, "n_requests": 25},
    ],
)
@pytest.mark.parametrize("exact", [True, False])
def test_chunk_size_does_not_change_the_analysis(sim_bundle, monkeypatch, sim, exact):
    path = sim_bundle(**sim)
    _resegment(path, 23)  # several segments; chunks cut across and inside them
    if not exact:
        monkeypatch.setattr(api, "EXACT_OWN_ROWS", 0)
    whole = analyze_full(path, chunk_rows=ONE_CHUNK)
    assert whole.result.top is not None
    for rows in (2, 17):
        part = analyze_full(path, chunk_rows=rows)
        _same_frames(whole, part)
        _same_maps(whole.result, part.result)


def test_chunked_equals_the_tables_in_memory(sim_bundle):
    """A bundle read chunk by chunk from its files, and the same tables handed over in memory."""
    path = sim_bundle(preemption_mode="recompute", num_kv_blocks=40, n_requests=40, rate_per_s=200.0)
    _resegment(path, 7)
    from_files = analyze_full(path, chunk_rows=5)
    t = from_files.tables
    in_memory = type(t)(meta=t.meta, requests=t.requests, steps=t.steps, samples=t.samples, path=t.path)
    _same_frames(from_files, analyze_full(in_memory, chunk_rows=3))
    st = request_stages(path)
    assert st["e2e_ns"].tolist() == from_files.stages["e2e_ns"].tolist()
    assert st["decode_compute"].tolist() == from_files.stages["decode_compute"].tolist()


def test_itl_pool_matches_numpy_percentiles():
    rng = np.random.default_rng(1)
    lists = [list(np.cumsum(rng.integers(1, 50_000_000, rng.integers(0, 9)))) for _ in range(300)]
    lists[3] = [5, None, 9, 30]  # a null stamp drops the gaps next to it
    lists[4] = None
    lists[5] = [10, 10 + 5 * 2**32, 10 + 5 * 2**32 - 7]  # a gap over 4.3 s and a negative one: int64
    codes = rng.integers(0, 3, len(lists))
    arr = pa.array(lists, pa.list_(pa.int64()))
    gaps, cls = [], []
    for i, row in enumerate(lists):
        for a, b in zip(row or [], (row or [])[1:], strict=False):
            if a is not None and b is not None:
                gaps.append((b - a) / 1e9)
                cls.append(codes[i])
    gaps, cls = np.array(gaps), np.array(cls)
    pool = pooled_gaps((arr.slice(i, 37) for i in range(0, len(lists), 37)), codes, 3)
    assert pool.by_class[0].dtype == np.int64
    for k, want in [(None, gaps), *((k, gaps[cls == k]) for k in range(3))]:
        got = pool.percentiles(k)
        assert got.count == len(want)
        np.testing.assert_allclose(
            [got.p50, got.p90, got.p95, got.p99, got.max, got.mean],
            [*np.percentile(want, [50, 90, 95, 99]), want.max(), want.mean()],
            rtol=1e-12,
        )
    small = pooled_gaps([pa.array([[1, 4, 6], [2, 3]], pa.list_(pa.int64()))], np.zeros(2, np.int64), 1)
    assert small.by_class[0].dtype == np.uint32 and small.percentiles().count == 3
    assert GapPool([np.empty(0, np.uint32)]).percentiles().count == 0


def test_request_lookup_matches_index_in():
    ids = pa.array(["a", "b", "c", "b", "d", "e"])
    lo = np.array([0, 10, 20, 30, 40, 50])
    hi = np.array([5, 15, 25, 35, 45, np.iinfo(np.int64).max])
    lookup = RequestLookup(ids, lo, hi)
    d = pa.array(["b", "x", "e", "a", "b", "d"])  # "b" twice (two batches' dictionaries), "x" unknown
    want = pc.index_in(d, value_set=ids).fill_null(-1).to_numpy()
    for window in [(0, 100), (11, 12), (60, 70), (-5, -1)]:
        assert lookup.rows(d, *window).tolist() == want.tolist(), window
    # A duplicated id maps to the request of that id alive in the window (the first row otherwise).
    assert lookup.rows(d, 31, 33).tolist() == [3, -1, 5, 0, 3, 4]


def test_iter_table_reads_what_table_reads(sim_bundle):
    path = sim_bundle(n_requests=30)
    _resegment(path, 11)
    b = read_bundle(path)
    for name, dictionary in (("requests", ()), ("steps", ("request_ids",))):
        whole = b.table(name, dictionary=dictionary)
        segs = b.segments(name)
        for rows in (None, 4):
            parts = list(b.iter_table(name, dictionary=dictionary, batch_rows=rows, segments=segs))
            assert pa.concat_tables(parts).equals(whole)
        cols = ["start_ns"] if name == "steps" else ["arrival_ns"]
        assert b.table(name, columns=cols, segments=segs).num_rows == whole.num_rows
        assert b.table(name, columns=cols, segments=[]).num_rows == 0
    assert isinstance(analyze_full(path).stages, pd.DataFrame)


def test_itl_pool_of_several_uint32_classes_matches_numpy():
    """Gaps that fit uint32, spread over classes: the percentiles of the union come from a search
    over the sorted class arrays."""
    rng = np.random.default_rng(7)
    lists = [list(np.cumsum(rng.integers(1, 3_000_000_000, rng.integers(2, 12)))) for _ in range(500)]
    codes = rng.integers(0, 3, len(lists))
    pool = pooled_gaps([pa.array(lists, pa.list_(pa.int64()))], codes, 3)
    assert all(a.dtype == np.uint32 for a in pool.by_class)
    gaps = np.concatenate([np.diff(r) for r in lists]) / 1e9
    got = pool.percentiles()
    np.testing.assert_allclose(
        [got.p50, got.p90, got.p95, got.p99, got.max], [*np.percentile(gaps, [50, 90, 95, 99]), gaps.max()], rtol=1e-12
    )


def test_itl_from_deliveries_that_start_in_a_later_chunk(sim_bundle):
    """Requests without ``delivered_ns`` before the first that has one: the ITL is pooled from the
    deliveries (the requests without add no gaps), whatever the chunk size."""
    path = sim_bundle(n_requests=20)
    b = read_bundle(path)
    req = b.table("requests")
    dl = req.column("delivered_ns").combine_chunks()
    assert dl.null_count == 0
    keep = pa.array(np.arange(req.num_rows) >= 6)
    req = req.set_column(req.schema.get_field_index("delivered_ns"), "delivered_ns", pc.if_else(keep, dl, None))
    for p in segment_paths(path, "requests"):
        p.unlink()
    pq.write_table(req, path / "requests" / "part-test0000-000001.parquet")
    gaps = np.concatenate([np.diff(np.array(r, np.int64)) for r in dl.to_pylist()[6:]]) / 1e9
    for rows in (ONE_CHUNK, 4):
        itl = analyze_full(path, chunk_rows=rows).result.latency[0].itl
        assert itl.count == len(gaps)
        assert itl.p50 == pytest.approx(np.percentile(gaps, 50), rel=1e-12)
        assert itl.p99 == pytest.approx(np.percentile(gaps, 99), rel=1e-12)


@pytest.mark.parametrize(
    "sim",
    [
        {"preemption_mode": "swap", "num_kv_blocks": 30, "swap_ns_per_block": 20_000, "n_requests": 30},
        {"throttle": True, "n_requests": 25},
    ],
)
def test_map_alone_equals_the_full_analysis(sim_bundle, sim):
    """``analyze`` drops its per-request and per-step frames as soon as the map has what it needs
    of them; the map is the one ``analyze_full`` (which keeps them) gives."""
    path = sim_bundle(**sim)
    _same_maps(analyze(path, chunk_rows=7), analyze_full(path).result)
