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
    assert "no change beyond noise" in text


# --- change against noise -------------------------------------------------------------------

WORKLOAD = dict(n_requests=60, rate_per_s=20, output_tokens=24)


def _changed(d):
    return [r for r in d.rows if r.verdict in ("better", "worse")]


def test_the_same_workload_twice_is_no_change(sim_bundle):
    from bottleneck_map.analyzer import analyze
    from bottleneck_map.analyzer.diff import diff_maps

    # Same load, other arrival draws: the figures move by sampling noise only.
    for seed in (2, 3):
        d = diff_maps(analyze(sim_bundle(**WORKLOAD, seed=1)), analyze(sim_bundle(**WORKLOAD, seed=seed)))
        assert not _changed(d), [(r.name, r.before, r.after) for r in _changed(d)]
        assert "no change beyond noise" in render_diff(d)


def test_a_shrinking_share_whose_time_grew_is_worse(sim_bundle):
    from bottleneck_map.analyzer import analyze
    from bottleneck_map.analyzer.diff import diff_maps

    # 8 ms of host work per step: every stage slows, the decode share shrinks as queueing grows.
    before = analyze(sim_bundle(**WORKLOAD, max_num_seqs=4))
    after = analyze(sim_bundle(**WORKLOAD, max_num_seqs=4, host_ns=8 * 1_000_000))
    d = diff_maps(before, after)
    rows = {(r.section, r.name): r for r in d.rows}
    dec = rows[("stage", "decode_compute_mean_s")]
    assert dec.share_after < dec.share_before and dec.after > dec.before
    assert dec.verdict == "worse"
    assert all(r.verdict != "better" for r in d.rows if r.section in ("stage", "class"))


def test_changes_from_about_zero_print_as_times_not_percentages(sim_bundle):
    from bottleneck_map.analyzer import analyze
    from bottleneck_map.analyzer.diff import diff_maps

    d = diff_maps(analyze(sim_bundle(**WORKLOAD, max_num_seqs=4)), analyze(sim_bundle(**WORKLOAD, max_num_seqs=1)))
    text = render_diff(d, width=120)
    queue = next(r for r in d.rows if r.name == "queue_mean_s")
    assert queue.verdict == "worse" and queue.before < 0.005
    line = next(x for x in text.splitlines() if "queue_mean_s" in x)
    assert line.rstrip().endswith(" ms") or line.rstrip().endswith(" s"), line
    assert all(len(tok) < 8 for tok in text.split() if tok.endswith("%")), text  # no "+137023%"


def test_different_workloads_are_named(sim_bundle):
    from bottleneck_map.analyzer import analyze
    from bottleneck_map.analyzer.diff import diff_maps

    d = diff_maps(analyze(sim_bundle(**WORKLOAD)), analyze(sim_bundle(**{**WORKLOAD, "n_requests": 30})))
    assert any("workloads differ" in w and "n_requests" in w for w in d.warnings)
    assert "warning: the workloads differ" in render_diff(d, width=200)
    same = diff_maps(analyze(sim_bundle(**WORKLOAD)), analyze(sim_bundle(**WORKLOAD, seed=2)))
    assert not any("workloads differ" in w for w in same.warnings)
