"""``bottleneck-map analyze`` and ``diff``: formats, flags, and clear errors for bad input."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from bottleneck_map.cli import app

runner = CliRunner()


def test_analyze_text_json_html(sim_bundle, tmp_path):
    b = sim_bundle(max_num_seqs=2, rate_per_s=60, n_requests=40)
    r = runner.invoke(app, ["analyze", str(b)])
    assert r.exit_code == 0, r.output
    assert "Bottleneck: queueing" in r.output and "Latency map" in r.output and "TTFT" in r.output
    r = runner.invoke(
        app,
        ["analyze", str(b), "--format", "json", "--slo", "ttft=0.5,e2e=10", "--window", "0.5", "--gpu-hour-cost", "2"],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["top"]["cls"] == "queueing" and doc["slo"] == {"ttft": 0.5, "e2e": 10.0} and doc["window_s"] == 0.5
    out = tmp_path / "r.html"
    r = runner.invoke(app, ["analyze", str(b), "--format", "html", "--out", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "Plotly.newPlot" in page
    assert not re.search(r"<script[^>]*\bsrc=", page)  # plotly.js is inlined: the file works offline
    assert len(page) > 1_000_000 and page.count("Plotly.newPlot") == 3


def test_bad_flags_exit_2_naming_the_flag(sim_bundle):
    b = sim_bundle()
    for args, flag in (
        (["--slo", "ttft=abc"], "--slo"),
        (["--window", "0"], "--window"),
        (["--gpu-hour-cost", "-1"], "--gpu-hour-cost"),
    ):
        r = runner.invoke(app, ["analyze", str(b), *args])
        assert r.exit_code == 2 and flag in r.output, r.output


def test_bad_bundles_exit_1_without_traceback(tmp_path):
    (tmp_path / "notabundle").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "meta.json").write_text("{not json")
    for p in (tmp_path / "missing", tmp_path / "notabundle", tmp_path / "broken"):
        r = runner.invoke(app, ["analyze", str(p)])
        assert r.exit_code == 1, r.output
        assert "error" in r.output and "Traceback" not in r.output
        assert r.exception is None or isinstance(r.exception, SystemExit)


def test_empty_bundle_is_a_clear_error(tmp_path):
    from bottleneck_map.bundle import BundleWriter, new_meta

    BundleWriter(tmp_path / "empty", new_meta("test")).close()
    r = runner.invoke(app, ["analyze", str(tmp_path / "empty")])
    assert r.exit_code == 1 and "no requests" in r.output


def test_diff(sim_bundle, tmp_path):
    before = sim_bundle(max_num_seqs=2, rate_per_s=60, n_requests=40)
    after = sim_bundle(max_num_seqs=16, rate_per_s=60, n_requests=40)
    r = runner.invoke(app, ["diff", str(before), str(after)])
    assert r.exit_code == 0, r.output
    assert "top verdict: queueing ->" in r.output
    assert "better" in r.output and "e2e_p95_s" in r.output
    js = tmp_path / "before.json"
    js.write_text(runner.invoke(app, ["analyze", str(before), "--format", "json"]).output)
    r = runner.invoke(app, ["diff", str(js), str(after), "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = {(x["section"], x["name"]): x for x in json.loads(r.output)["rows"]}
    assert rows[("latency", "e2e_p95_s")]["verdict"] == "better"
    assert rows[("stage", "queue_mean_s")]["verdict"] == "better"


def test_no_bundle_named_takes_the_newest_runs(sim_bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["analyze"])
    assert r.exit_code == 1 and "no bundle named" in r.output and "bmap-runs" in r.output
    runs = tmp_path / "bmap-runs"
    runs.mkdir()
    older = sim_bundle(max_num_seqs=2, rate_per_s=60, n_requests=40).rename(runs / "older")
    assert runner.invoke(app, ["diff"]).exit_code == 1  # one run: nothing to compare it with
    newer = sim_bundle(max_num_seqs=16, rate_per_s=60, n_requests=40).rename(runs / "newer")
    meta = json.loads((newer / "meta.json").read_text())
    meta["created_unix_ns"] = json.loads((older / "meta.json").read_text()).get("created_unix_ns", 0) + 1
    (newer / "meta.json").write_text(json.dumps(meta))
    r = runner.invoke(app, ["analyze", "--format", "json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output[r.output.index("{") :])["bundle"].endswith("newer")
    r = runner.invoke(app, ["diff"])
    assert r.exit_code == 0, r.output
    assert "top verdict: queueing ->" in r.output  # before = the older run (2 slots), after = the newer
