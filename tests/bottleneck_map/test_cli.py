from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from bottleneck_map import __version__
from bottleneck_map.cli import app

runner = CliRunner()


def test_version_and_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"bottleneck-map {__version__}"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "validate" in result.output


def test_validate_valid_bundle_text(make_bundle):
    path = make_bundle(n_requests=3, n_steps=2)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "requests" in result.output and "time span" in result.output


def test_validate_json_reports_counts(make_bundle):
    path = make_bundle(n_requests=3, n_steps=2)
    result = runner.invoke(app, ["validate", str(path), "--format", "json"])
    assert result.exit_code == 0
    doc = json.loads(result.output)
    assert doc["valid"] is True and doc["rows"]["requests"] == 3 and doc["span_s"] > 0


def test_validate_invalid_bundle_exits_1_with_reasons(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path), "--format", "json"])
    assert result.exit_code == 1
    assert "meta.json: missing" in json.loads(result.output)["errors"][0]


def test_usage_errors_exit_2(tmp_path, make_bundle):
    assert runner.invoke(app, ["validate", str(make_bundle()), "--format", "yaml"]).exit_code == 2
    assert runner.invoke(app, ["no-such-command"]).exit_code == 2


def test_console_script_runs_as_a_module():
    out = subprocess.run(
        [sys.executable, "-m", "bottleneck_map.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert __version__ in out.stdout


def test_a_missing_bundle_exits_1_naming_it_in_every_command(tmp_path):
    missing = str(tmp_path / "nope")
    for args in (["validate", missing], ["analyze", missing], ["diff", missing, missing], ["fleet", missing]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert "nope" in result.output and "Traceback" not in result.output, args
