"""``diff``'s table: every changed figure whole at 80 columns."""

from __future__ import annotations

from bottleneck_map.analyzer.diff import DiffRow, MapDiff, render_diff


def test_changed_rows_fit_80_columns():
    d = MapDiff("a", "b", "queueing", "decode_memory_bandwidth")
    d.rows = [
        DiffRow("class", "decode_memory_bandwidth_share", 0.1234, 0.5678, 0.4444, 3.6, "worse"),
        DiffRow("throughput", "output_token_throughput", 1234.5, 2345.6, 1111.1, 0.9, "better"),
        DiffRow("latency", "e2e_p95_s", 1.5, 1.5, 0.0, 0.0, "same"),
    ]
    text = render_diff(d, width=80)
    assert text.startswith("top verdict: queueing -> decode_memory_bandwidth")
    assert "…" not in text and max(len(line.rstrip()) for line in text.splitlines()) <= 80
    assert "decode_memory_bandwidth_share" in text and "output_token_throughput" in text
    assert "+360%" in text and "e2e_p95_s" not in text


def test_no_change():
    text = render_diff(MapDiff("a", "b", "queueing", "queueing"))
    assert "no change beyond 2%" in text
