"""Help and tables at 80 columns, in a pipe: nothing shortened, every flag whole."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import typer.main
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from bottleneck_map.cli import app
from bottleneck_map.terminal import Fit, metavar

runner = CliRunner()
COMMANDS = sorted(typer.main.get_command(app).commands)


def _help(*args: str, columns: int = 80) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.output


def _flags(name: str) -> list[str]:
    cmd = typer.main.get_command(app).commands[name]
    options = [p for p in cmd.params if p.param_type_name == "option" and not p.hidden]
    return [opt for p in options for opt in (*p.opts, *p.secondary_opts)]


def test_every_command_is_checked():
    assert {"run", "serve", "analyze", "diff", "fleet", "collect", "agent", "dashboard", "validate"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_fits_80_columns_with_every_flag_whole(name):
    out = _help(name)
    assert "…" not in out and "<bool>" not in out and "<str>" not in out and "{" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    words = set(out.replace(",", " ").split())
    for flag in _flags(name):
        assert flag in words, f"{name}: {flag} not whole in\n{out}"


def test_help_names_values_the_way_click_does():
    run = _help("run")
    assert "--max-num-batched-tokens INTEGER" in run and "--prompt-len TEXT" in run
    assert "--enable-prefix-caching / --no-enable-prefix-caching" in run
    assert "--record-prompts " in run and "--record-prompts BOOLEAN" not in run
    analyze = _help("analyze")
    assert "Usage: bottleneck-map analyze [OPTIONS] [BUNDLE]" in analyze
    assert "Usage: bottleneck-map validate [OPTIONS] BUNDLE\n" in _help("validate")
    assert "--format [text|json|html]" in analyze
    assert "[BUNDLES...]" in _help("dashboard")
    missing = runner.invoke(app, ["validate"])
    assert missing.exit_code == 2 and "Missing argument 'BUNDLE'" in missing.output


def test_command_list_is_never_cut():
    out = _help()
    for name in COMMANDS:
        cmd = typer.main.get_command(app).commands[name]
        first_sentence = " ".join(cmd.help.split(".")[0].split())
        assert first_sentence in " ".join(out.split()), name
    assert "..." not in out.replace("[ARGS]...", "")


def test_help_in_a_pipe_without_columns_is_80_wide():
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    out = subprocess.run(
        [sys.executable, "-m", "bottleneck_map.cli", "serve", "--help"], capture_output=True, text=True, env=env
    ).stdout
    assert "--max-num-batched-tokens" in out and "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80


@pytest.mark.parametrize(
    ("label", "expected"),
    [("<int>", "INTEGER"), ("<str>", "TEXT"), ("<float>", "FLOAT"), ("<path>", "PATH"),
     ("<text|json>", "[text|json]"), ("<list[str]>", "TEXT")],
)  # fmt: skip
def test_metavar(label, expected):
    assert metavar(label) == expected


def _table(header: str) -> Table:
    t = Table(box=None)
    t.add_column(header, no_wrap=True)
    t.add_row("x")
    return t


def _render(renderable, width: int) -> str:
    buf = io.StringIO()
    Console(width=width, file=buf).print(renderable)
    return buf.getvalue()


def test_fit_takes_the_first_layout_that_fits_else_the_last():
    fit = Fit([lambda: _table("w" * 50), lambda: _table("n" * 20), lambda: _table("last")])
    assert "w" * 50 in _render(fit, 80)
    assert "n" * 20 in _render(fit, 40)
    assert "last" in _render(fit, 10)
    with pytest.raises(ValueError):
        Fit([])
