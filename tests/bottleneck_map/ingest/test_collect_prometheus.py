"""Prometheus range queries -> sample rows (against a stand-in for the HTTP API)."""

from __future__ import annotations

import re

import httpx
import pytest

from bottleneck_map.ingest.prometheus import PrometheusError, SeriesSpec, collect_samples, step_for

T = 1_763_900_000.0


def fake_prometheus(series: dict[str, list[dict]], seen: list[dict]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/query_range"
        params = dict(request.url.params)
        seen.append(params)
        q = params["query"]
        if q == "bad(":
            return httpx.Response(400, json={"status": "error", "errorType": "bad_data", "error": "parse error"})
        # A metric name matches when it is followed by ")" or "{" (not a longer name such as
        # vllm:num_requests_waiting_by_reason for vllm:num_requests_waiting).
        result = next((v for k, v in series.items() if re.search(re.escape(k) + r"[){]", q)), [])
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "matrix", "result": result}})

    return httpx.Client(transport=httpx.MockTransport(handler))


def test_series_are_merged_per_instance_and_time_with_units_converted():
    seen: list[dict] = []
    client = fake_prometheus(
        {
            "vllm:num_requests_waiting": [
                {"metric": {"instance": "a:8000"}, "values": [[T, "3"], [T + 1, "5"]]},
                {"metric": {"instance": "b:8000"}, "values": [[T, "0"]]},
            ],
            "vllm:kv_cache_usage_perc": [{"metric": {"instance": "a:8000"}, "values": [[T, "0.97"]]}],
            "DCGM_FI_DEV_GPU_UTIL": [{"metric": {"instance": "a:9400", "gpu": "0"}, "values": [[T, "87"]]}],
            "DCGM_FI_DEV_SM_CLOCK": [{"metric": {"instance": "a:9400", "gpu": "0"}, "values": [[T, "1410"]]}],
        },
        seen,
    )
    rows, points = collect_samples("http://prom:9090", int(T * 1e9), int((T + 1) * 1e9), step_s=1, client=client)
    a = [r for r in rows if r["instance"] == "a:8000"]
    assert a[0] == {
        "ts_ns": int(T * 1e9),
        "source": "prometheus:vllm",
        "device": None,
        "instance": "a:8000",
        "num_requests_waiting": 3.0,
        "kv_cache_usage_ratio": 0.97,
    }
    assert a[1]["num_requests_waiting"] == 5.0
    gpu = next(r for r in rows if r["source"] == "prometheus:dcgm")
    assert gpu["device"] == "0"
    assert gpu["gpu_util_ratio"] == pytest.approx(0.87)
    assert gpu["sm_clock_hz"] == pytest.approx(1.41e9)
    assert points["num_requests_waiting"] == 3
    assert {p["step"] for p in seen} == {"1"}
    assert all(p["start"] == f"{T:.3f}" for p in seen)


def test_instances_filter_and_query_errors():
    client = fake_prometheus(
        {"vllm:num_requests_running": [{"metric": {"instance": i}, "values": [[T, "1"]]} for i in ("a", "b")]}, []
    )
    rows, _ = collect_samples("http://p", int(T * 1e9), int(T * 1e9), step_s=1, instances=["b"], client=client)
    assert {r["instance"] for r in rows} == {"b"}
    with pytest.raises(PrometheusError, match="parse error"):
        collect_samples("http://p", 0, 1, step_s=1, series=[SeriesSpec("load1", "bad(", "node")], client=client)


def test_unreachable_prometheus_is_a_clear_error():
    with pytest.raises(PrometheusError, match="cannot reach Prometheus"):
        collect_samples("http://127.0.0.1:9", 0, int(1e9), step_s=1, timeout_s=2)


def test_step_keeps_series_under_the_point_limit():
    assert step_for(0, 60) == 1
    assert (86_400 * 7) / step_for(0, 86_400 * 7) <= 11_000


def test_collect_cli_pulls_prometheus_without_a_receiver(tmp_path):
    import time

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from typer.testing import CliRunner

    from bottleneck_map.bundle import read_bundle
    from bottleneck_map.cli import app
    from bottleneck_map.ingest.http_server import UvicornServer
    from bottleneck_map.validate import validate_bundle

    now = time.time()

    async def query_range(request):
        q = request.query_params["query"]
        start, end = float(request.query_params["start"]), float(request.query_params["end"])
        result = []
        if "vllm:num_requests_waiting" in q:
            values = [[t, "2"] for t in range(int(start) + 1, int(end) + 1)]
            result = [{"metric": {"instance": "10.0.0.1:8000"}, "values": values}]
        return JSONResponse({"status": "success", "data": {"resultType": "matrix", "result": result}})

    with UvicornServer(Starlette(routes=[Route("/api/v1/query_range", query_range)])) as prom:
        out = tmp_path / "b"
        r = CliRunner().invoke(
            app,
            ["collect", "--out", str(out), "--no-receive", "--prometheus", prom.url, "--lookback", "10", "--step", "1"],
        )
    assert r.exit_code == 0, r.output
    assert validate_bundle(out).valid
    b = read_bundle(out)
    s = b.samples
    assert len(s) >= 9 and (s["num_requests_waiting"] == 2.0).all() and set(s["instance"]) == {"10.0.0.1:8000"}
    assert (s["ts_ns"] >= int((now - 11) * 1e9)).all()
    assert b.meta["capabilities"]["samples"] is True and b.meta["ingest"]["prometheus"]["points"]

    gone = CliRunner().invoke(
        app, ["collect", "--out", str(tmp_path / "c"), "--no-receive", "--prometheus", "http://127.0.0.1:9"]
    )
    assert gone.exit_code == 1 and "cannot reach Prometheus" in gone.output
    bad = CliRunner().invoke(app, ["collect", "--out", str(tmp_path / "d"), "--no-receive"])
    assert bad.exit_code == 2 and "--prometheus" in bad.output
