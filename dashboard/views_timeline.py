"""View 2, the timeline: the figure for the whole run or a zoomed range, and the notes on what is missing."""

from __future__ import annotations

from typing import Any

from dash import dcc, html

from bottleneck_map.dashboard import drilldown, series
from bottleneck_map.dashboard.components import GRAPH_CONFIG
from bottleneck_map.dashboard.figures_timeline import timeline_figure
from bottleneck_map.dashboard.store import Loaded


def timeline_data(loaded: Loaded) -> tuple[Any, Any]:
    t0 = drilldown.t0_ns(loaded)
    engine = loaded.memoised("engine_frame", lambda: series.engine_frame(loaded.tables.steps, t0))
    hardware = loaded.memoised("hardware_frame", lambda: series.hardware_frame(loaded.tables.samples, t0))
    return engine, hardware


def sample_engine_data(loaded: Loaded) -> series.SampleEngineFrame:
    """The engine's own series from the samples, per instance (drawn when the bundle has no steps)."""
    t0 = drilldown.t0_ns(loaded)
    return loaded.memoised("sample_engine_frame", lambda: series.sample_engine_frame(loaded.tables.samples, t0))


def timeline_figure_for(loaded: Loaded, x_range: tuple[float, float] | None = None) -> Any:
    if x_range is None:
        return loaded.memoised("timeline:full", lambda: _timeline_figure(loaded, None))
    return _timeline_figure(loaded, x_range)


def _timeline_figure(loaded: Loaded, x_range: tuple[float, float] | None) -> Any:
    engine, hardware = timeline_data(loaded)
    eng = series.bucket(engine, series.ENGINE_AGG, x_range=x_range)
    hw_cols = {c: "mean" for c in hardware.frame.columns if c != "t_s"}
    hw = series.HardwareFrame(
        series.bucket(hardware.frame, hw_cols, x_range=x_range), hardware.groups, hardware.missing, hardware.throttle
    )
    sample = None
    if not len(engine):
        full = sample_engine_data(loaded)
        sample = series.SampleEngineFrame(
            series.bucket(full.frame, full.agg(), x_range=x_range), full.instances, full.series
        )
    return timeline_figure(loaded.bmap.windows, loaded.bmap.window_s, eng, hw, x_range=x_range, sample_engine=sample)


def timeline_view(loaded: Loaded) -> html.Div:
    engine, hardware = timeline_data(loaded)
    notes = []
    if not len(engine):
        sample = sample_engine_data(loaded)
        if len(sample):
            shown = sample.instances[0] if len(sample.instances) == 1 else f"{len(sample.instances)} instances"
            notes.append(
                "This bundle has no engine steps (for example an ingested vLLM deployment): the engine panels show "
                f"the engine's own series from the samples ({shown}, one line per instance): running, waiting, "
                "KV-cache usage, preemptions and tokens per second. Batch size and tokens per step need steps."
            )
        else:
            notes.append(
                "This bundle has no engine steps and no engine series in its samples: engine panels are hidden."
            )
    if hardware.missing:
        notes.append(
            "Not in this bundle: " + "; ".join(hardware.missing) + ". Run with the agent on a GPU host to record them."
        )
    return html.Div(
        [
            html.P(
                "All panels share one time axis: drag to zoom any panel and all follow; dense series are "
                "re-aggregated on the server for the range shown. Double-click to reset.",
                className="bm-help",
            ),
            html.Ul([html.Li(n) for n in notes], className="bm-notes") if notes else None,
            dcc.Graph(id="timeline-graph", figure=timeline_figure_for(loaded), config=GRAPH_CONFIG),
            dcc.Store(id="timeline-range"),
        ]
    )
