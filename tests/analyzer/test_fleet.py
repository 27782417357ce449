"""The fleet summary table: fits 80 columns, words the top verdict as the text report does."""

from __future__ import annotations

import io

from rich.console import Console

from bottleneck_map.analyzer.fleet import fleet_table, top_label


def _row(instance: str, top: str | None, share: float | None = 0.67, conf: float | None = 0.8) -> dict:
    return {
        "instance": instance, "requests": 600, "ttft_p50_s": 0.1322, "ttft_p99_s": 12.2758, "tpot_p50_s": 0.0676,
        "e2e_p99_s": 14.787, "top": top, "top_share": share, "top_confidence": conf, "unreachable": [],
    }  # fmt: skip


ROWS = [
    _row("fleet", "decode_memory_bandwidth"),
    _row("gpu-node-12.example.internal:8000", "kv_cache_capacity"),
    _row("10.0.0.3:8001", "balanced", 0.0, 0.2),
]


def _text(width: int) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True).print(fleet_table(ROWS))
    return buf.getvalue()


def test_top_label_matches_the_text_report():
    assert top_label(_row("a", "balanced", 0.0, 0.2)) == "no confident verdict"
    assert top_label(_row("a", "balanced", 0.0, 0.9)) == "balanced (0%)"
    assert top_label(_row("a", "decode_memory_bandwidth")) == "decode_memory_bandwidth (67%)"
    assert top_label(_row("a", "decode_memory_bandwidth"), spaced=True) == "decode memory bandwidth (67%)"
    assert top_label(_row("a", None, None, None)) == "-"


def test_wide_console_keeps_ids_and_one_line_headers():
    text = _text(160)
    assert "decode_memory_bandwidth (67%)" in text and "TTFT p50" in text and "12,275.8" in text


def test_80_columns_cut_nothing():
    text = _text(80)
    assert "…" not in text
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80
    assert "no confident verdict" in " ".join(text.split())
    assert "bandwidth (67%)" in text and "12,275.8" in text and "14,787.0" in text
