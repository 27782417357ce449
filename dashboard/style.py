"""Colours, names and the shared plotly look of every dashboard figure."""

from __future__ import annotations

import plotly.graph_objects as go

from bottleneck_map import palette
from bottleneck_map.palette import GROUP_COLORS, NO_CLASS_COLOR, PHASE_COLORS, WORKLOAD_COLORS  # noqa: F401 (the figures import them from here)

# One colour per bottleneck class, the same in every view (and in the HTML report).
CLASS_COLORS: dict[str, str] = {
    **palette.CLASS_COLORS,
    "idle": "#ECEFF1",  # a window no request time overlaps
}

CLASS_NAMES: dict[str, str] = {
    "queueing": "Queueing",
    "kv_cache_capacity": "KV-cache capacity",
    "prefill_compute": "Prefill compute",
    "decode_memory_bandwidth": "Decode memory bandwidth",
    "decode_compute": "Decode compute",
    "pcie_transfer": "PCIe transfer",
    "host_overhead": "Host overhead",
    "tokenization": "Tokenization",
    "streaming": "Streaming",
    "power_thermal": "Power / thermal",
    "balanced": "Balanced",
    "idle": "Idle",
}

STAGE_NAMES: dict[str, str] = {
    "receive": "receive",
    "tokenize": "tokenize",
    "queue": "queue",
    "prefill_compute": "prefill compute",
    "prefill_wait": "prefill wait",
    "requeue": "re-queue after preemption",
    "recompute": "recompute",
    "swap": "swap",
    "decode_compute": "decode compute",
    "decode_wait": "decode wait",
    "streaming": "streaming",
}

FONT = "Inter, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"


def class_color(cls: str | None) -> str:
    return CLASS_COLORS.get(cls or "", NO_CLASS_COLOR)


def class_name(cls: str | None) -> str:
    if not cls:
        return "unclassified"
    return CLASS_NAMES.get(cls, cls)


def stage_name(stage: str) -> str:
    return STAGE_NAMES.get(stage, stage.replace("_", " "))


def base_layout(fig: go.Figure, *, height: int | None = None, title: str | None = None) -> go.Figure:
    """The common look: white background, light grid, compact margins, legend on top."""
    fig.update_layout(
        template="plotly_white",
        font={"family": FONT, "size": 12, "color": "#1f2933"},
        margin={"l": 60, "r": 20, "t": 50 if title else 30, "b": 40},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0, "font": {"size": 11}},
        hoverlabel={"font": {"family": FONT}},
    )
    if title:
        fig.update_layout(title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}})
    if height:
        fig.update_layout(height=height)
    return fig


def fmt_s(seconds: float | None) -> str:
    """Human duration: 850 µs, 12.3 ms, 1.42 s."""
    if seconds is None or seconds != seconds:
        return "–"
    a = abs(seconds)
    if a >= 1:
        return f"{seconds:.2f} s"
    if a >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def fmt_pct(x: float | None) -> str:
    if x is None or x != x:
        return "–"
    return f"{x * 100:.0f}%" if abs(x) >= 0.1 else f"{x * 100:.1f}%"


def fmt_si(x: float | None, unit: str = "") -> str:
    """1.2 G, 350 M, 4.1 k with a unit."""
    if x is None or x != x:
        return "–"
    for div, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()
