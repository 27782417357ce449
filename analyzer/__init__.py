"""Analyzer: turns a trace bundle into the bottleneck map (stages, latency metrics, roofline, verdicts).

``analyze(bundle)`` is the facade; the drill-down tables (per request, per step, per
window) are public functions too. Everything here only reads bundles.
"""

from bottleneck_map.analyzer.api import (
    Analysis,
    analyze,
    analyze_full,
    request_metrics,
    request_stages,
    request_timeline,
    step_roofline,
    window_timeline,
)
from bottleneck_map.analyzer.report_text import summarize_bundle, summary_text
from bottleneck_map.analyzer.result import (
    CLASSES,
    MAP_SCHEMA_VERSION,
    STAGE_GROUPS,
    STAGES,
    BottleneckMap,
    CostSummary,
    DevicePeaks,
    Evidence,
    LatencySummary,
    Percentiles,
    RequestExplanation,
    RooflinePoint,
    StageStats,
    Unreachable,
    Verdict,
    WindowVerdict,
)
from bottleneck_map.analyzer.stages import RequestTimeline

__all__ = [
    "CLASSES",
    "MAP_SCHEMA_VERSION",
    "STAGES",
    "STAGE_GROUPS",
    "Analysis",
    "BottleneckMap",
    "CostSummary",
    "DevicePeaks",
    "Evidence",
    "LatencySummary",
    "Percentiles",
    "RequestExplanation",
    "RequestTimeline",
    "RooflinePoint",
    "StageStats",
    "Unreachable",
    "Verdict",
    "WindowVerdict",
    "analyze",
    "analyze_full",
    "request_metrics",
    "request_stages",
    "request_timeline",
    "step_roofline",
    "summarize_bundle",
    "summary_text",
    "window_timeline",
]
