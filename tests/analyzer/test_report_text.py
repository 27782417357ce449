"""The text report at the console's width: nothing cut at 80 columns, the full width used when wider."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from bottleneck_map.analyzer.api import analyze
from bottleneck_map.analyzer.report_text import render
from bottleneck_map.analyzer.result import BottleneckMap
from bottleneck_map.cli import app

SAMPLE = Path(__file__).resolve().parents[2] / "sample_traces" / "default"


@pytest.fixture(scope="module")
def sample_map() -> BottleneckMap:
    if not (SAMPLE / "meta.json").exists():
        pytest.skip("no shipped sample")
    return analyze(SAMPLE)


def _text(m: BottleneckMap, width: int) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, force_terminal=False).print(render(m))
    return buf.getvalue()


def _table_lines(text: str, title: str) -> list[str]:
    block = text[text.index(title) :].split("\n\n", 1)[0]
    return block.splitlines()[1:]


def test_analyze_in_a_pipe_at_80_columns_cuts_nothing(sample_map):
    out = CliRunner().invoke(app, ["analyze", str(SAMPLE)], env={"COLUMNS": "80"}).output
    assert "…" not in out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80
    for header in ("stage", "share", "p50 ms", "p95 ms", "class behind it"):
        assert header in out
    words = set(out.split())
    shown = [s for s in sample_map.stages if s.total_s > 0]
    assert shown
    for s in shown:
        assert s.group in words and (s.cls is None or s.cls in words)


def test_tables_use_the_full_width_when_there_is_one(sample_map):
    wide = _text(sample_map, 160)
    assert "TTFT p50" in wide and "out tok/s" in wide  # one-line headers
    decode = next(line for line in _table_lines(wide, "Latency map") if line.startswith("decode "))
    assert "#" * 14 in decode  # the full 16-character bar at a share of ~90%


def test_long_class_names_wrap_instead_of_being_cut(sample_map):
    doc = json.loads(sample_map.to_json())
    for i, lat in enumerate(doc["latency"]):
        if lat["workload_class"] != "all":
            lat["workload_class"] = f"summarization-with-long-context-{i}"
    m = BottleneckMap.from_json(json.dumps(doc))
    for width in (80, 72):
        text = _text(m, width)
        assert "…" not in text
        assert max(len(line.rstrip()) for line in text.splitlines()) <= width
        rows = "".join(line.split(" ")[0] for line in _table_lines(text, "Per workload class"))
        assert "summarization-with-long-context-1" in rows


def test_evidence_that_wraps_continues_under_its_bullet(sample_map):
    text = _text(sample_map, 60)
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  - "))
    end = next(i for i, line in enumerate(lines) if line.startswith("Latency map"))
    block = [line for line in lines[start:end] if line.strip()]
    assert len(block) > len(sample_map.top.evidence)  # some evidence wraps at 60 columns
    assert all(line.startswith(("  - ", "    ", "  Fix: ")) for line in block), block
