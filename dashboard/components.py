"""Small pieces shared by the views: graph options and the class chip."""

from __future__ import annotations

from dash import html

from bottleneck_map.dashboard.style import class_color, class_name

GRAPH_CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"scale": 2}}


def chip(cls: str | None, text: str | None = None) -> html.Span:
    """A colour swatch and the class name (or ``text``), the same in every view."""
    return html.Span(
        [html.Span(className="bm-swatch", style={"background": class_color(cls)}), text or class_name(cls)],
        className="bm-chip",
    )
