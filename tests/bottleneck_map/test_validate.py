from __future__ import annotations

from factories import request_row, step_row

from bottleneck_map.bundle import BundleWriter, new_meta
from bottleneck_map.validate import validate_bundle


def _bundle(tmp_path, requests, steps=(), close=True):
    w = BundleWriter(tmp_path / "b", new_meta("test"))
    for r in requests:
        w.add_request(r)
    for s in steps:
        w.add_step(s)
    if close:
        w.close()
    else:
        w.flush()
    return tmp_path / "b"


def test_valid_bundle_reports_counts_and_span(make_bundle):
    report = validate_bundle(make_bundle(n_requests=5, n_steps=8))
    assert report.valid, report.errors
    assert report.rows == {"requests": 5, "steps": 8, "samples": 1}
    assert report.start_ns == request_row(0)["arrival_ns"]
    assert report.end_ns == request_row(4)["last_byte_ns"]
    assert abs(report.span_s - (report.end_ns - report.start_ns) / 1e9) < 1e-12


def test_duplicate_request_ids(tmp_path):
    report = validate_bundle(_bundle(tmp_path, [request_row(0), request_row(0)]))
    assert not report.valid
    assert any("request_id not unique (req-0)" in e for e in report.errors)


def test_lifecycle_out_of_order_names_the_field_and_request(tmp_path):
    r = request_row(1)
    r["first_token_ns"] = r["queued_ns"] - 1
    report = validate_bundle(_bundle(tmp_path, [request_row(0), r]))
    assert any("first_token_ns earlier" in e and "req-1" in e for e in report.errors)


def test_token_times_must_be_monotonic(tmp_path):
    r = request_row(0)
    r["token_ns"] = [5, 4, 6, 7]
    report = validate_bundle(_bundle(tmp_path, [r]))
    assert any("token_ns not monotonic for req-0" in e for e in report.errors)


def test_steps_must_reference_known_requests_in_a_closed_bundle(tmp_path):
    report = validate_bundle(_bundle(tmp_path, [request_row(0)], [step_row(0, ["req-0", "ghost"])]))
    assert any("request ids not in requests (ghost)" in e for e in report.errors)


def test_unknown_step_requests_in_an_unclosed_bundle_are_only_a_warning(tmp_path):
    report = validate_bundle(_bundle(tmp_path, [request_row(0)], [step_row(0, ["req-0", "ghost"])], close=False))
    assert report.valid
    assert any("in flight" in w for w in report.warnings)


def test_steps_time_order_and_list_lengths(tmp_path):
    s0, s1 = step_row(0, ["req-0"]), step_row(1, ["req-0"])
    s1["start_ns"], s1["end_ns"] = s0["start_ns"] - 10, s0["start_ns"] - 20
    s0["query_lens"] = [1, 1]
    report = validate_bundle(_bundle(tmp_path, [request_row(0)], [s0, s1]))
    text = "\n".join(report.errors)
    assert "end_ns before start_ns for step 1" in text
    assert "start_ns not monotonic" in text
    assert "query_lens length differs" in text


def test_missing_meta_is_invalid_not_an_exception(tmp_path):
    report = validate_bundle(tmp_path)
    assert not report.valid
    assert "meta.json: missing" in report.errors[0]
