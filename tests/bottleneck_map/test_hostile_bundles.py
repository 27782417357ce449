"""Bundles broken by accident or on purpose: every reader says what is wrong, naming the field,
and never reads outside the bundle."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from factories import request_row
from typer.testing import CliRunner

from bottleneck_map.bundle import BundleError, BundleWriter, new_meta, read_bundle
from bottleneck_map.cli import app
from bottleneck_map.validate import validate_bundle


def set_meta(path: Path, **fields) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta.update(fields)
    (path / "meta.json").write_text(json.dumps(meta))


def rewrite_meta(path: Path, raw: bytes) -> None:
    (path / "meta.json").write_bytes(raw)


BROKEN_META = {
    "meta.json a directory": (lambda p: ((p / "meta.json").unlink(), (p / "meta.json").mkdir()), "not a regular file"),
    "invalid UTF-8": (lambda p: rewrite_meta(p, b'{"schema_version": 1, "x": "\xff\xfe"}'), "not valid UTF-8"),
    "deep nesting": (lambda p: rewrite_meta(p, b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
    "device a string": (lambda p: set_meta(p, device="gpu"), "field device is 'gpu', expected an object"),
    "model a list": (lambda p: set_meta(p, model=[1]), "field model"),
    "end_ns a string": (lambda p: set_meta(p, end_ns="soon"), "field end_ns"),
}


@pytest.mark.parametrize("case", BROKEN_META)
def test_broken_meta_is_refused_by_every_reader_naming_the_field(make_bundle, case):
    path = make_bundle()
    breaker, reason = BROKEN_META[case]
    breaker(path)
    with pytest.raises(BundleError, match=reason):
        read_bundle(path)
    report = validate_bundle(path)
    assert not report.valid and reason in report.errors[0]
    r = CliRunner().invoke(app, ["analyze", str(path)])
    assert r.exit_code == 1 and reason in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["analyze", str(path), "--force"])  # --force cannot read it either
    assert r.exit_code == 1 and reason in r.output and "Traceback" not in r.output


def test_a_table_that_is_a_file_is_an_error(make_bundle):
    path = make_bundle()
    for seg in (path / "steps").iterdir():
        seg.unlink()
    (path / "steps").rmdir()
    (path / "steps").write_text("not a folder")
    report = validate_bundle(path)
    assert not report.valid and "steps: not a directory" in report.errors[0]


def test_a_segment_that_is_not_a_regular_file_is_an_error_not_a_hang(make_bundle):
    path = make_bundle()
    os.mkfifo(path / "samples" / "part-fifo-000099.parquet")  # opening a FIFO would block for good
    report = validate_bundle(path)
    assert not report.valid and "not a regular file" in report.errors[0]


def write_bundle(path: Path, rows: list[dict], samples: list[dict] = (), **meta) -> Path:
    with BundleWriter(path, new_meta("test", **meta)) as w:
        w.extend("requests", rows)
        w.extend("samples", samples)
    return path


@pytest.mark.parametrize(
    ("rows", "samples", "meta", "reason"),
    [
        ([request_row(0, t0=0)], [], {}, "requests: arrival_ns has zero or negative times"),
        ([request_row(0, t0=-(10**9))], [], {}, "requests: arrival_ns has zero or negative times"),
        ([request_row(0, token_ns=[5, -1])], [], {}, "requests: token_ns has zero or negative times"),
        ([request_row(0)], [{"ts_ns": 0, "source": "host"}], {}, "samples: ts_ns has zero or negative times"),
        ([request_row(0, max_tokens=-1)], [], {}, "requests: max_tokens has negative values"),
        ([request_row(0)], [], {"device": {"peak_flops": math.nan}}, "device.peak_flops is nan"),
        ([request_row(0)], [], {"device": {"peak_bandwidth_bytes_per_s": -1}}, "device.peak_bandwidth_bytes_per_s"),
        ([request_row(0)], [], {"device": {"measured": {"matmul_flops": math.inf}}}, "device.measured.matmul_flops"),
        ([request_row(0, finished_ns=1)], [], {}, "finished_ns earlier than the preceding lifecycle event"),
    ],
)
def test_validate_rejects_impossible_values_and_analyze_refuses_them(tmp_path, rows, samples, meta, reason):
    path = write_bundle(tmp_path / "b", rows, samples, **meta)
    report = validate_bundle(path)
    assert not report.valid and any(reason in e for e in report.errors), report.errors
    r = CliRunner().invoke(app, ["analyze", str(path)])
    assert r.exit_code == 1 and reason in r.output and "--force" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["analyze", str(path), "--force", "--format", "json"])
    assert r.exit_code == 0 and "warning" in r.stderr and reason in r.stderr


def test_fleet_refuses_what_validate_rejects_unless_forced(tmp_path):
    reason = "requests: max_tokens has negative values"
    path = write_bundle(tmp_path / "b", [request_row(0, max_tokens=-1)])
    r = CliRunner().invoke(app, ["fleet", str(path)])
    assert r.exit_code == 1 and reason in r.output and "--force" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["fleet", str(path), "--force", "--format", "json"])
    assert r.exit_code == 0 and "warning" in r.stderr and reason in r.stderr
    assert json.loads(r.stdout)[0]["instance"] == "fleet"


def test_a_valid_bundle_is_analysed_without_a_warning(make_bundle):
    r = CliRunner().invoke(app, ["analyze", str(make_bundle()), "--format", "json"])
    assert r.exit_code == 0 and "warning" not in r.stderr


def test_links_that_leave_the_bundle_are_not_followed(make_bundle, tmp_path):
    path = make_bundle()
    outside = make_bundle(name="elsewhere")
    seg = next((outside / "requests").iterdir())
    (path / "requests" / "part-link-000001.parquet").symlink_to(seg)
    with pytest.raises(BundleError, match="leads outside the bundle"):
        read_bundle(path).table("requests")
    assert "leads outside the bundle" in validate_bundle(path).errors[0]
    (path / "requests" / "part-link-000001.parquet").unlink()
    # a whole table folder linked elsewhere, and meta.json linked elsewhere
    for seg in (path / "steps").iterdir():
        seg.unlink()
    (path / "steps").rmdir()
    (path / "steps").symlink_to(outside / "steps")
    assert "leads outside the bundle" in validate_bundle(path).errors[0]
    (path / "steps").unlink()
    (path / "meta.json").unlink()
    (path / "meta.json").symlink_to(outside / "meta.json")
    with pytest.raises(BundleError, match="leads outside the bundle"):
        read_bundle(path)


def test_links_inside_the_bundle_and_a_linked_bundle_are_read(make_bundle, tmp_path):
    path = make_bundle()
    seg = next((path / "requests").iterdir())
    (path / "requests" / "part-copy-000001.parquet").symlink_to(seg)  # a link that stays inside
    assert read_bundle(path).table("requests").num_rows == 10
    (tmp_path / "latest").symlink_to(path)  # the bundle itself reached through a link
    assert validate_bundle(tmp_path / "latest").rows["requests"] == 10
