"""Drill-down tables for one loaded bundle, computed by the analyzer's own functions and memoised.

The dashboard does not decompose or classify anything itself: per-request stages and
metrics, pooled inter-token latencies, per-step roofline positions and request
lifecycles all come from :mod:`bottleneck_map.analyzer`; this module only caches them
per loaded bundle and pages, sorts and filters them for the browser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from bottleneck_map.dashboard.store import Loaded

REQUEST_COLUMNS = [
    "request_id",
    "workload_class",
    "ok",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "prompt_tokens",
    "output_tokens",
    "cached_prompt_tokens",
    "preemptions",
    "steps",
    "dominant_stage",
]


def requests_table(loaded: Loaded) -> pd.DataFrame:
    """One row per request: the analyzer's metrics and stage decomposition (stage columns in seconds)."""

    def compute() -> pd.DataFrame:
        from bottleneck_map.analyzer.result import STAGES

        metrics = loaded.analysis.metrics
        stages = loaded.analysis.stages
        out = metrics.drop(columns=[c for c in ("arrival_ns", "end_ns") if c in metrics.columns]).copy()
        for s in STAGES:
            out[f"{s}_s"] = stages[s].to_numpy() / 1e9
        out["steps"] = stages["steps"].to_numpy() if "steps" in stages else 0
        stage_ns = stages[list(STAGES)].to_numpy()
        out["dominant_stage"] = np.asarray(STAGES, dtype=object)[stage_ns.argmax(axis=1)] if len(out) else []
        out["arrival_s"] = (stages["arrival_ns"].to_numpy() - t0_ns(loaded)) / 1e9
        for col in ("ttft_s", "tpot_s", "e2e_s"):
            out[col] = out[col].round(6)
        return out

    return loaded.memoised("requests_table", compute)


def itl_table(loaded: Loaded) -> pd.DataFrame:
    """Every pooled inter-token gap (seconds, the analyzer's ITL) with its request's workload class."""

    def compute() -> pd.DataFrame:
        itl = loaded.analysis.itl
        classes = loaded.analysis.metrics["workload_class"].to_numpy()
        return pd.DataFrame({"workload_class": classes[itl["req"].to_numpy()], "itl_s": itl["itl_s"].to_numpy()})

    return loaded.memoised("itl", compute)


def step_roofline(loaded: Loaded) -> pd.DataFrame:
    """The analyzer's per-step roofline table (phase, FLOPs, bytes, achieved FLOP/s, intensity)."""
    return loaded.analysis.roofline


def _t0(loaded: Loaded) -> int:
    start = getattr(loaded.bmap, "start_ns", None)
    if start is not None:
        return int(start)
    req = loaded.tables.requests
    if req.num_rows:
        return int(pc.min(req.column("arrival_ns")).as_py())
    steps = loaded.tables.steps
    return int(pc.min(steps.column("start_ns")).as_py()) if steps.num_rows else 0


def t0_ns(loaded: Loaded) -> int:
    """The run start every time axis is relative to (the map's start)."""
    return loaded.memoised("t0", lambda: _t0(loaded))


@dataclass
class RequestTimeline:
    """One request for the waterfall: lifecycle intervals and the engine steps it was in (ms since arrival)."""

    request_id: str
    workload_class: str | None
    intervals: pd.DataFrame  # stage, start_ms, end_ms
    steps: pd.DataFrame  # step_id, start_ms, end_ms, is_prefill, query_len, batch_size, num_prefill_tokens
    stages_s: dict[str, float]


def request_timeline(loaded: Loaded, request_id: str) -> RequestTimeline | None:
    """The analyzer's timeline of one request (lifecycle, preempted spans, member steps) in ms
    since its arrival; None if the id is unknown."""
    from bottleneck_map.analyzer import request_timeline as analyzer_timeline

    tl = analyzer_timeline(loaded.analysis, str(request_id))
    if tl is None:
        return None
    t0 = tl.bounds["t0"]
    intervals = pd.DataFrame(
        {
            "stage": tl.intervals["stage"].to_numpy(),
            "start_ms": (tl.intervals["start_ns"].to_numpy(np.int64) - t0) / 1e6,
            "end_ms": (tl.intervals["end_ns"].to_numpy(np.int64) - t0) / 1e6,
        }
    )
    st = tl.steps
    steps = pd.DataFrame(
        {
            "step_id": st["step_id"].to_numpy(),
            "start_ms": (st["start_ns"].to_numpy(np.int64) - t0) / 1e6,
            "end_ms": (st["end_ns"].to_numpy(np.int64) - t0) / 1e6,
            "is_prefill": st["is_prefill"].to_numpy(bool),
            "query_len": st["query_len"].to_numpy(),
            "batch_size": st["batch_size"].to_numpy(),
            "num_prefill_tokens": st["num_prefill_tokens"].to_numpy(),
        }
    )
    stages_s = {s: v / 1e9 for s, v in tl.stages_ns.items()}
    return RequestTimeline(tl.request_id, tl.workload_class, intervals, steps, stages_s)


# -- paging, sorting and filtering for the request grid (AG Grid infinite row model) --

_TEXT_OPS = {
    "contains": lambda s, v: s.str.contains(v, case=False, regex=False),
    "notContains": lambda s, v: ~s.str.contains(v, case=False, regex=False),
    "equals": lambda s, v: s.str.lower() == v.lower(),
    "notEqual": lambda s, v: s.str.lower() != v.lower(),
    "startsWith": lambda s, v: s.str.lower().str.startswith(v.lower()),
    "endsWith": lambda s, v: s.str.lower().str.endswith(v.lower()),
}
_NUM_OPS = {
    "equals": lambda s, v, _: s == v,
    "notEqual": lambda s, v, _: s != v,
    "lessThan": lambda s, v, _: s < v,
    "lessThanOrEqual": lambda s, v, _: s <= v,
    "greaterThan": lambda s, v, _: s > v,
    "greaterThanOrEqual": lambda s, v, _: s >= v,
    "inRange": lambda s, v, to: (s >= v) & (s <= to),
}


def _condition(series: pd.Series, cond: dict[str, Any]) -> pd.Series:
    kind = cond.get("type")
    if kind == "blank":
        return series.isna()
    if kind == "notBlank":
        return series.notna()
    if cond.get("filterType") == "number":
        op = _NUM_OPS.get(kind)
        value = cond.get("filter")
        if op is None or not isinstance(value, (int, float)):
            return pd.Series(True, index=series.index)
        to = cond.get("filterTo")
        return op(
            pd.to_numeric(series, errors="coerce"), float(value), float(to) if isinstance(to, (int, float)) else value
        )
    op = _TEXT_OPS.get(kind)
    value = cond.get("filter")
    if op is None or not isinstance(value, str):
        return pd.Series(True, index=series.index)
    return op(series.astype("string").fillna(""), value).fillna(False).astype(bool)


def apply_filter(frame: pd.DataFrame, model: dict[str, Any] | None) -> pd.DataFrame:
    """Apply an AG Grid filter model (text and number filters, AND/OR of two conditions).

    Only known column names are used; anything else in the model is ignored.
    """
    if not model:
        return frame
    mask = pd.Series(True, index=frame.index)
    for col, spec in model.items():
        if col not in frame.columns or not isinstance(spec, dict):
            continue
        conds = spec.get("conditions")
        if isinstance(conds, list) and conds:
            parts = [
                _condition(frame[col], {**c, "filterType": spec.get("filterType")})
                for c in conds
                if isinstance(c, dict)
            ]
            combined = parts[0]
            for p in parts[1:]:
                combined = (combined | p) if spec.get("operator") == "OR" else (combined & p)
            mask &= combined
        else:
            mask &= _condition(frame[col], spec)
    return frame[mask]


def apply_sort(frame: pd.DataFrame, model: list[dict[str, Any]] | None) -> pd.DataFrame:
    cols = [m["colId"] for m in model or [] if isinstance(m, dict) and m.get("colId") in frame.columns]
    if not cols:
        return frame
    asc = [m.get("sort") != "desc" for m in model or [] if isinstance(m, dict) and m.get("colId") in frame.columns]
    return frame.sort_values(cols, ascending=asc, kind="stable", na_position="last")


def page(frame: pd.DataFrame, request: dict[str, Any] | None, columns: list[str]) -> dict[str, Any]:
    """One block of rows for the grid: ``rowData`` (JSON-safe) and the filtered ``rowCount``."""
    request = request or {}
    view = apply_sort(apply_filter(frame, request.get("filterModel")), request.get("sortModel"))
    start = max(int(request.get("startRow") or 0), 0)
    end = min(max(int(request.get("endRow") or start + 100), start), start + 1000)
    block = view.iloc[start:end][columns]
    block = block.astype(object).where(block.notna(), None)
    return {"rowData": block.to_dict("records"), "rowCount": len(view)}
