from __future__ import annotations

import json
import threading
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from factories import request_row

from bottleneck_map.bundle import (
    BundleError,
    BundleWarning,
    BundleWriter,
    new_meta,
    read_bundle,
    segment_paths,
)
from bottleneck_map.schema import REQUESTS, SCHEMA_VERSION, STEPS


def test_round_trip_keeps_values_and_types(make_bundle):
    path = make_bundle(n_requests=3)
    b = read_bundle(path)
    assert b.meta["schema_version"] == SCHEMA_VERSION
    assert b.closed
    req = b.table("requests")
    assert req.schema == REQUESTS
    assert req.column("request_id").to_pylist() == ["req-0", "req-1", "req-2"]
    assert b.requests["token_ns"].iloc[0].tolist() == request_row(0)["token_ns"]
    assert b.table("steps").schema == STEPS
    assert len(b.samples) == 1


def test_plain_pandas_and_pyarrow_read_every_table_without_our_code(make_bundle):
    path = make_bundle(n_requests=4, n_steps=6)
    assert len(pd.read_parquet(path / "requests")) == 4
    assert ds.dataset(path / "steps", format="parquet").count_rows() == 6
    assert len(pd.read_parquet(path / "samples")) == 1
    assert json.loads((path / "meta.json").read_text())["clock"]["kind"] == "monotonic"


def test_text_columns_are_dictionary_encoded_and_numbers_plain(make_bundle):
    path = make_bundle(n_requests=4, n_steps=6)
    for table, text, number in (("requests", "request_id", "arrival_ns"), ("steps", "request_ids", "start_ns")):
        meta = pq.ParquetFile(next((path / table).glob("*.parquet"))).metadata.row_group(0)
        enc = {meta.column(i).path_in_schema.split(".")[0]: meta.column(i).encodings for i in range(meta.num_columns)}
        assert any("DICTIONARY" in e for e in enc[text]), (table, enc[text])
        assert not any("DICTIONARY" in e for e in enc[number]), (table, enc[number])


def test_flush_by_row_count_makes_segments_before_close(tmp_path):
    w = BundleWriter(tmp_path / "b", new_meta("test"), flush_rows=10, flush_interval_s=60)
    for i in range(25):
        w.add_request(request_row(i))
    assert len(segment_paths(tmp_path / "b", "requests")) == 2  # 2 x 10 rows flushed, 5 buffered
    assert len(read_bundle(tmp_path / "b").table("requests")) == 20
    w.close()
    assert len(read_bundle(tmp_path / "b").table("requests")) == 25


def test_flush_by_interval(tmp_path):
    w = BundleWriter(tmp_path / "b", new_meta("test"), flush_rows=1_000_000, flush_interval_s=0.05)
    w.add_request(request_row(0))
    deadline = threading.Event()
    for _ in range(100):
        if segment_paths(tmp_path / "b", "requests"):
            break
        deadline.wait(0.02)
    assert len(segment_paths(tmp_path / "b", "requests")) == 1
    w.close()


def test_append_from_many_threads_loses_nothing(tmp_path):
    w = BundleWriter(tmp_path / "b", new_meta("test"), flush_rows=37, flush_interval_s=0.01)

    def produce(k: int) -> None:
        for i in range(200):
            w.add_request(request_row(k * 1000 + i))

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    ids = read_bundle(tmp_path / "b").table("requests").column("request_id").to_pylist()
    assert len(ids) == 800 and len(set(ids)) == 800


def test_no_temporary_file_is_ever_visible_as_a_segment(tmp_path):
    w = BundleWriter(tmp_path / "b", new_meta("test"), flush_rows=5)
    for i in range(50):
        w.add_request(request_row(i))
    w.close()
    names = [p.name for p in (tmp_path / "b" / "requests").iterdir()]
    assert all(n.startswith("part-") and n.endswith(".parquet") for n in names)


def test_a_row_that_does_not_fit_is_dropped_with_a_warning_and_the_rest_kept(tmp_path):
    w = BundleWriter(tmp_path / "b", new_meta("test"))
    w.add_request(request_row(0))
    w.add_request({"request_id": None, "arrival_ns": 5})
    w.add_request(request_row(1, prompt_tokens="many"))
    w.add_request(request_row(2))
    with pytest.warns(BundleWarning, match="requests: dropped a row"):
        w.close()
    assert read_bundle(tmp_path / "b").table("requests").column("request_id").to_pylist() == ["req-0", "req-2"]


def test_second_writer_appends_without_touching_meta(make_bundle):
    path = make_bundle(n_requests=2)
    before = (path / "meta.json").read_text()
    with BundleWriter(path, None, tables=("samples",)) as w:
        w.add_sample({"ts_ns": 5, "source": "gpu", "device": "0", "power_w": 100.0})
    assert (path / "meta.json").read_text() == before
    assert len(read_bundle(path).samples) == 2


def test_writer_refuses_bad_settings_and_closed_appends(tmp_path):
    with pytest.raises(ValueError, match="flush_rows"):
        BundleWriter(tmp_path / "a", new_meta("t"), flush_rows=0)
    with pytest.raises(BundleError, match="missing"):
        BundleWriter(tmp_path / "nometa", None)
    w = BundleWriter(tmp_path / "b", new_meta("t"))
    w.close()
    with pytest.raises(BundleError, match="closed"):
        w.add_request(request_row(0))


def test_truncated_last_segment_is_skipped_with_a_warning_naming_it(tmp_path):
    w = BundleWriter(tmp_path / "b", new_meta("test"), flush_rows=3)
    for i in range(9):
        w.add_request(request_row(i))
    w.close()
    last = segment_paths(tmp_path / "b", "requests")[-1]
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    b = read_bundle(tmp_path / "b")
    with pytest.warns(BundleWarning, match=last.name):
        t = b.table("requests")
    assert t.num_rows == 6
    assert last.name in b.warnings[0]


def test_corrupt_segment_in_the_middle_is_an_error(tmp_path):
    w = BundleWriter(tmp_path / "b", new_meta("test"), flush_rows=3)
    for i in range(9):
        w.add_request(request_row(i))
    w.close()
    first = segment_paths(tmp_path / "b", "requests")[0]
    first.write_bytes(b"not parquet at all")
    with pytest.raises(BundleError, match=first.name):
        read_bundle(tmp_path / "b").table("requests")


def test_missing_meta_unknown_version_and_bad_json_are_errors(tmp_path, make_bundle):
    with pytest.raises(BundleError, match="meta.json: missing"):
        read_bundle(tmp_path)
    path = make_bundle()
    meta = json.loads((path / "meta.json").read_text())
    meta["schema_version"] = 99
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="schema_version is 99"):
        read_bundle(path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_bundle(path)


def test_column_of_wrong_type_is_an_error_naming_file_and_field(make_bundle):
    path = make_bundle()
    bad = pa.table({"request_id": ["x"], "arrival_ns": ["yesterday"]})
    target = path / "requests" / "part-zzzz-000001.parquet"
    pq.write_table(bad, target)
    with pytest.raises(BundleError) as err:
        read_bundle(path).table("requests")
    assert target.name in str(err.value) and "'arrival_ns'" in str(err.value)


def test_missing_nullable_columns_read_as_null(tmp_path: Path, make_bundle):
    path = make_bundle(n_requests=1)
    minimal = pa.table({"request_id": ["old"], "arrival_ns": pa.array([7], pa.int64())})
    pq.write_table(minimal, path / "requests" / "part-aaaa-000001.parquet")
    t = read_bundle(path).table("requests")
    assert t.num_rows == 2
    assert t.column("first_token_ns").null_count == 1


def test_columns_round_trip_in_call_order_with_rows(tmp_path):
    w = BundleWriter(tmp_path / "b", new_meta("test"), tables=("samples",))
    w.add_sample({"ts_ns": 1, "source": "host", "cpu_util_ratio": 0.5})
    w.extend_columns(
        "samples",
        {
            "ts_ns": [2, 3],
            "source": ["gpu", "host"],
            "device": ["0", "host"],
            "power_w": [100, None],
            "cpu_util_per_core": [None, [0.25, 0.75]],
        },
    )
    w.add_sample({"ts_ns": 4, "source": "gpu", "device": "1", "power_w": 50.5})
    w.close()
    table = read_bundle(tmp_path / "b").table("samples")
    assert len(segment_paths(tmp_path / "b", "samples")) == 1
    assert table.column("ts_ns").to_pylist() == [1, 2, 3, 4]
    assert table.column("power_w").to_pylist() == [None, 100.0, None, 50.5]
    assert table.column("cpu_util_per_core").to_pylist() == [None, None, [0.25, 0.75], None]
    assert table.column("instance").null_count == 4  # columns left out are null


def test_columns_count_toward_flush_rows(tmp_path):
    w = BundleWriter(tmp_path / "b", new_meta("test"), tables=("samples",), flush_rows=5, flush_interval_s=60)
    w.extend_columns("samples", {"ts_ns": [1, 2, 3], "source": ["host"] * 3})
    assert segment_paths(tmp_path / "b", "samples") == []
    w.extend_columns("samples", {"ts_ns": [4, 5], "source": ["host"] * 2})
    assert len(read_bundle(tmp_path / "b").table("samples")) == 5
    w.extend_columns("samples", {})  # no rows: nothing buffered
    w.close()
    assert len(read_bundle(tmp_path / "b").table("samples")) == 5


def test_a_column_row_that_does_not_fit_is_dropped_and_the_rest_kept(tmp_path):
    w = BundleWriter(tmp_path / "b", new_meta("test"), tables=("samples",))
    w.extend_columns("samples", {"ts_ns": [1, 2, 3], "source": ["gpu", None, "gpu"], "power_w": [1.0, 2.0, "x"]})
    with pytest.warns(BundleWarning, match="samples: dropped a row"):
        w.close()
    assert read_bundle(tmp_path / "b").table("samples").column("ts_ns").to_pylist() == [1]


def test_columns_of_unknown_names_or_unequal_lengths_are_refused(tmp_path):
    w = BundleWriter(tmp_path / "b", new_meta("test"), tables=("samples",))
    with pytest.raises(ValueError, match="no column"):
        w.extend_columns("samples", {"ts_ns": [1], "source": ["gpu"], "bogus": [1]})
    with pytest.raises(ValueError, match="different lengths"):
        w.extend_columns("samples", {"ts_ns": [1, 2], "source": ["gpu"]})
    with pytest.raises(ValueError, match="does not write"):
        w.extend_columns("steps", {"step_id": [1]})
    w.close()
    with pytest.raises(BundleError, match="closed"):
        w.extend_columns("samples", {"ts_ns": [1], "source": ["gpu"]})


def test_table_reads_chosen_columns_and_strings_dictionary_encoded(make_bundle):
    path = make_bundle(n_requests=3, n_steps=5)
    w = BundleWriter(path, None)  # a second segment, its own dictionary
    w.add_step({"step_id": 99, "start_ns": 1, "end_ns": 2, "request_ids": ["req-2", "late"]})
    w.close()
    b = read_bundle(path)
    plain = b.table("steps")
    t = b.table("steps", columns=["request_ids", "step_id", "instance"], dictionary=["request_ids", "instance"])
    assert t.column_names == ["step_id", "instance", "request_ids"]  # schema order
    code = pa.dictionary(pa.int32(), pa.string())
    assert t.schema.field("request_ids").type == pa.list_(pa.field("element", code))
    assert t.schema.field("instance").type == code  # all null, still the dictionary type
    assert t.column("request_ids").num_chunks == 2
    # Decoded, the values are the plain read's, in the same order.
    assert t.column("request_ids").to_pylist() == plain.column("request_ids").to_pylist()
    assert t.column("step_id").equals(plain.column("step_id"))
    # The plain read is unchanged and still cached; options bypass the cache.
    assert b.table("steps") is plain and plain.schema.field("request_ids").type == pa.list_(pa.string())
    with pytest.raises(ValueError, match="no column"):
        b.table("steps", columns=["nope"])
    with pytest.raises(ValueError, match="strings only"):
        b.table("steps", dictionary=["step_id"])
