"""Timeline of a collected (step-less) fleet bundle: the engine panels come from the engine's own
series in the samples, one line per instance, with the values the analyzer's instance_series reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from dashboard_collected import KV, SECONDS, SLOTS, make_collected_bundle

from bottleneck_map.dashboard.bundles import BundleRegistry
from bottleneck_map.dashboard.store import Loaded, Store


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    path = make_collected_bundle(tmp_path_factory.mktemp("collected") / "fleet")
    store = Store(BundleRegistry([path]))
    return store.get(store.registry.entries()[0].id)


def _trace(fig, name: str):  # noqa: ANN001, ANN202
    return next(t for t in fig.data if t.name == name)


def test_engine_panels_from_samples_one_line_per_instance(collected: Loaded) -> None:
    from bottleneck_map.dashboard.views_timeline import timeline_figure_for

    assert not collected.bmap.capabilities["steps"]
    fig = timeline_figure_for(collected)
    titles = [a.text for a in fig.layout.annotations]
    assert any(t.startswith("running (the batch) and waiting") for t in titles), titles
    assert any(t.startswith("KV-cache usage and preemptions") for t in titles)
    assert any(t.startswith("prompt and generation tokens per second") for t in titles)
    for inst in (KV, SLOTS):
        for label in ("running", "waiting", "KV usage", "prompt tok/s", "generation tok/s"):
            assert len(_trace(fig, f"{label} {inst}").x) >= SECONDS - 1, (label, inst)
    assert list(_trace(fig, f"KV usage {KV}").y) == pytest.approx([50.0] + [98.0] * (SECONDS - 1))
    assert set(_trace(fig, f"waiting {SLOTS}").y) == {6.0}
    assert set(_trace(fig, f"running {SLOTS}").y) == {4.0}
    # instances keep their own sample instants (seconds since the run start)
    assert _trace(fig, f"running {SLOTS}").x[0] - _trace(fig, f"running {KV}").x[0] == pytest.approx(0.3, abs=1e-3)
    # counters as per-second rates; a restarted counter is a reset, not a negative rate
    assert list(_trace(fig, f"prompt tok/s {KV}").y) == pytest.approx([200.0] * (SECONDS - 1))
    assert list(_trace(fig, f"generation tok/s {SLOTS}").y) == pytest.approx([90.0] * (SECONDS - 1))
    pre = _trace(fig, f"preemptions {KV}")
    assert min(pre.y) > 0 and sum(pre.y) == pytest.approx(2 * 19 + 9)  # 0 at the reset, then 1 a second
    assert not any(t.name.startswith(f"preemptions {SLOTS}") for t in fig.data)  # its counter never moves
    # the analyzer's window timeline for the same bundle agrees on the fleet's KV usage
    w = collected.bmap.windows[5]
    assert w.kv_usage == pytest.approx((0.98 + 0.3) / 2) and w.num_waiting == pytest.approx(11.0)


def test_zoomed_range_keeps_the_instances_and_the_note_says_where_engine_series_come_from(collected: Loaded) -> None:
    from bottleneck_map.dashboard.views_timeline import timeline_figure_for, timeline_view

    fig = timeline_figure_for(collected, (10.0, 12.0))
    xs = _trace(fig, f"running {SLOTS}").x
    assert len(xs) == 2 and all(10.0 <= x <= 12.0 for x in xs)
    notes = str(timeline_view(collected))
    assert "2 instances, one line per instance" in notes and "engine panels are hidden" not in notes


def test_steps_bundle_keeps_the_step_panels(bundles: dict[str, Path]) -> None:
    from bottleneck_map.dashboard.views_timeline import timeline_figure_for

    store = Store(BundleRegistry([bundles["light"]]))
    fig = timeline_figure_for(store.get(store.registry.entries()[0].id))
    names = {t.name for t in fig.data}
    assert "batch size" in names and not any(n and n.startswith("running (") for n in names)
