"""View 4, the request explorer: the server-paged grid and the place for the waterfall."""

from __future__ import annotations

import dash_ag_grid as dag
from dash import html

from bottleneck_map.dashboard.store import Loaded

_MS = {"function": "params.value == null ? '–' : d3.format('.2f')(params.value * 1000) + ' ms'"}
_GRID_COLUMNS = [
    {"field": "request_id", "headerName": "request", "filter": "agTextColumnFilter", "pinned": "left", "width": 130},
    {"field": "workload_class", "headerName": "class", "filter": "agTextColumnFilter", "width": 100},
    {"field": "ok", "headerName": "ok", "width": 70, "filter": False},
    {"field": "ttft_s", "headerName": "TTFT", "filter": "agNumberColumnFilter", "valueFormatter": _MS},
    {"field": "tpot_s", "headerName": "TPOT", "filter": "agNumberColumnFilter", "valueFormatter": _MS},
    {"field": "e2e_s", "headerName": "E2E", "filter": "agNumberColumnFilter", "valueFormatter": _MS, "sort": "desc"},
    {"field": "prompt_tokens", "headerName": "prompt tok", "filter": "agNumberColumnFilter"},
    {"field": "output_tokens", "headerName": "output tok", "filter": "agNumberColumnFilter"},
    {"field": "cached_prompt_tokens", "headerName": "cached tok", "filter": "agNumberColumnFilter"},
    {"field": "preemptions", "headerName": "preempted", "filter": "agNumberColumnFilter"},
    {"field": "steps", "headerName": "steps", "filter": "agNumberColumnFilter"},
    {"field": "dominant_stage", "headerName": "largest stage", "filter": "agTextColumnFilter"},
]


def requests_view(loaded: Loaded) -> html.Div:
    return html.Div(
        [
            html.P(
                "Every request of the run; sort and filter on the server (click a header, use the column menu). "
                "Select a row to see its waterfall of stages and the engine steps it was in.",
                className="bm-help",
            ),
            dag.AgGrid(
                id="req-grid",
                columnDefs=_GRID_COLUMNS,
                defaultColDef={"sortable": True, "resizable": True, "floatingFilter": True, "minWidth": 90, "flex": 1},
                rowModelType="infinite",
                getRowId="params.data.request_id",
                dashGridOptions={
                    "rowSelection": {"mode": "singleRow", "checkboxes": False, "enableClickSelection": True},
                    "cacheBlockSize": 100,
                    "maxBlocksInCache": 20,
                    "rowBuffer": 20,
                },
                style={"height": "360px"},
            ),
            html.Div(
                id="waterfall",
                className="bm-waterfall",
                children=html.P("Select a request above.", className="bm-help"),
            ),
        ]
    )
