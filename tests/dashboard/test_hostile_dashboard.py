"""The dashboard under crafted requests and hostile bundles: it reads nothing outside the bundles it
was given, answers every callback without a traceback, and bounds what a client may send."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from bottleneck_map.dashboard.app import create_app
from bottleneck_map.dashboard.store import Store

TAB_OUTPUT = "..tab-content.children...run-summary.children...bundle-sig.data.."


def render_tab(client: Any, tab: Any, bundle_value: Any, compare: Any = None) -> Any:
    body = {
        "output": TAB_OUTPUT,
        "outputs": [
            {"id": "tab-content", "property": "children"},
            {"id": "run-summary", "property": "children"},
            {"id": "bundle-sig", "property": "data"},
        ],
        "inputs": [
            {"id": "view-ready", "property": "data", "value": tab},
            {"id": "bundle", "property": "value", "value": bundle_value},
            {"id": "bundle-sig", "property": "data", "value": None},
        ],
        "state": [
            {"id": "tabs", "property": "value", "value": tab},
            {"id": "compare-store", "property": "data", "value": compare},
        ],
        "changedPropIds": ["bundle.value"],
    }
    return client.post("/_dash-update-component", json=body)


def grid_rows(client: Any, request: Any, bid: Any) -> Any:
    body = {
        "output": "req-grid.getRowsResponse",
        "outputs": {"id": "req-grid", "property": "getRowsResponse"},
        "inputs": [{"id": "req-grid", "property": "getRowsRequest", "value": request}],
        "state": [{"id": "bundle", "property": "value", "value": bid}],
        "changedPropIds": ["req-grid.getRowsRequest"],
    }
    return client.post("/_dash-update-component", json=body)


def waterfall(client: Any, rows: Any, bid: Any) -> Any:
    body = {
        "output": "waterfall.children",
        "outputs": {"id": "waterfall", "property": "children"},
        "inputs": [{"id": "req-grid", "property": "selectedRows", "value": rows}],
        "state": [{"id": "bundle", "property": "value", "value": bid}],
        "changedPropIds": ["req-grid.selectedRows"],
    }
    return client.post("/_dash-update-component", json=body)


def no_traceback(resp: Any) -> str:
    text = resp.get_data(as_text=True)
    assert resp.status_code in (200, 204), (resp.status_code, text[:300])
    assert "Traceback" not in text and 'File "' not in text
    return text


@pytest.fixture
def hostile(bundles: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """Copies of a good bundle: one intact, one whose segment links to a bundle outside, and one
    whose meta.json has a section of the wrong type."""
    good = shutil.copytree(bundles["light"], tmp_path / "good")
    linked = shutil.copytree(bundles["light"], tmp_path / "linked")
    secret = shutil.copytree(bundles["busy"], tmp_path / "outside")  # not named to the dashboard
    for seg in (linked / "requests").iterdir():
        seg.unlink()
    (linked / "requests" / "part-aaaa-000001.parquet").symlink_to(next((secret / "requests").iterdir()))
    wrong = shutil.copytree(bundles["light"], tmp_path / "wrong")
    meta = json.loads((wrong / "meta.json").read_text())
    (wrong / "meta.json").write_text(json.dumps({**meta, "device": "gpu"}))
    return {"good": good, "linked": linked, "wrong": wrong, "outside": secret}


def test_a_link_out_of_a_bundle_or_a_wrong_meta_shows_an_error_not_the_data(hostile: dict[str, Path]) -> None:
    app = create_app([hostile["good"], hostile["linked"], hostile["wrong"]], warm=False)
    store: Store = app.server.config["BMAP_STORE"]
    client = app.server.test_client()
    ids = {e.path.name: e.id for e in store.registry.entries()}
    text = no_traceback(render_tab(client, "requests", ids["linked"]))
    assert "leads outside the bundle" in text and "cannot be analysed" in text
    text = no_traceback(render_tab(client, "map", ids["wrong"]))
    assert "field device is" in text and "expected an object" in text
    for request in ({"startRow": 0, "endRow": 100}, None):
        text = no_traceback(grid_rows(client, request, ids["linked"]))
        assert "cmpl" not in text and "rowData" not in text  # no row of the linked-to bundle
    text = no_traceback(render_tab(client, "requests", ids["good"]))
    assert "cannot be analysed" not in text


def invalid_bundle(path: Path) -> Path:
    """Requests the analyzer can read, one of which `validate` rejects (a negative max_tokens)."""
    from factories import request_row

    from bottleneck_map.bundle import BundleWriter, new_meta

    with BundleWriter(path, new_meta("test")) as w:
        w.extend("requests", [request_row(i, t0=10**9 + i * 10**7, max_tokens=-1 if i == 0 else 16) for i in range(4)])
    return path


def test_a_bundle_validate_rejects_opens_with_the_reasons_above_the_map(hostile: dict[str, Path], tmp_path) -> None:
    bad = invalid_bundle(tmp_path / "invalid")
    app = create_app([bad, hostile["good"]], warm=False)
    store: Store = app.server.config["BMAP_STORE"]
    client = app.server.test_client()
    ids = {e.path.name: e.id for e in store.registry.entries()}
    text = no_traceback(render_tab(client, "map", ids["invalid"]))
    assert "rejects this bundle, so the map below may be wrong" in text
    assert "requests: max_tokens has negative values" in text
    assert "rejects this bundle" not in no_traceback(render_tab(client, "map", ids["good"]))


CRAFTED_IDS = [
    "../outside",
    "/etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "b" + "0" * 12,
    "\x00",
    "x" * 10_000,
    {"path": "/etc/passwd"},
    ["b0"],
    12,
    1e308,
    True,
]


@pytest.mark.parametrize("bid", CRAFTED_IDS, ids=lambda v: repr(v)[:30])
def test_crafted_ids_open_nothing(hostile: dict[str, Path], bid: Any) -> None:
    app = create_app([hostile["good"]], warm=False)
    client = app.server.test_client()
    text = no_traceback(render_tab(client, "map", bid, compare=bid))
    assert "This bundle is not available." in text
    no_traceback(grid_rows(client, {"startRow": 0, "endRow": 10}, bid))
    no_traceback(waterfall(client, [{"request_id": "x"}], bid))
    assert str(hostile["outside"]) not in text


CRAFTED_GRID_REQUESTS = [
    {"startRow": "abc", "endRow": 10},
    {"startRow": 1e308, "endRow": float("inf")},
    {"startRow": -(10**30), "endRow": 10**30},
    {"filterModel": ["not", "a", "dict"]},
    {"filterModel": {"request_id": {"filterType": "text", "type": "contains", "filter": {"$ne": 1}}}},
    {"filterModel": {"e2e_s": {"filterType": "number", "type": "greaterThan", "filter": "NaN"}}},
    {"sortModel": [{"colId": ["request_id"], "sort": "desc"}]},
    {"sortModel": "request_id"},
    {"startRow": 0, "endRow": 5, "filterModel": {"../../etc/passwd": {"type": "contains", "filter": "x"}}},
    [1, 2, 3],
    "startRow",
]


def test_crafted_grid_requests_and_selections_get_an_answer_never_a_traceback(hostile: dict[str, Path]) -> None:
    app = create_app([hostile["good"]], warm=False)
    client = app.server.test_client()
    bid = app.server.config["BMAP_STORE"].registry.default.id
    for request in CRAFTED_GRID_REQUESTS:
        no_traceback(grid_rows(client, request, bid))
    for rows in ([{"request_id": "../../etc/passwd"}], [{"request_id": {"a": 1}}], ["x"], [[]], {"a": 1}, [None]):
        text = no_traceback(waterfall(client, rows, bid))
        assert "passwd" not in text or "not in this bundle" in text
    for tab in ("../../etc/passwd", 5, None, "compare"):
        no_traceback(render_tab(client, tab, bid, compare="../outside"))


def test_a_request_body_over_the_limit_gets_413(hostile: dict[str, Path]) -> None:
    app = create_app([hostile["good"]], warm=False, max_request_bytes=4096)
    client = app.server.test_client()
    bid = app.server.config["BMAP_STORE"].registry.default.id
    resp = render_tab(client, "map", bid, compare="x" * 10_000)
    assert resp.status_code == 413 and "Traceback" not in resp.get_data(as_text=True)
    assert render_tab(client, "map", bid).status_code == 200  # an ordinary callback still fits


@pytest.mark.slow
def test_the_served_dashboard_refuses_oversize_bodies_and_drops_silent_connections(bundles: dict[str, Path]) -> None:
    """The real command, served by waitress: a declared oversize body is refused from its header, a
    connection that sends nothing is closed after --read-timeout, and the server keeps answering."""
    import os
    import subprocess
    import sys
    import urllib.request

    from dashboard_server import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "bottleneck_map.cli", "dashboard", str(bundles["light"]), "--port", str(port)]
    cmd += ["--max-request-bytes", "65536", "--read-timeout", "2", "--max-connections", "20"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "dashboard did not start"
                time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(
                b"POST /_dash-update-component HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 300000000\r\n\r\n"
            )
            assert s.recv(200).startswith(b"HTTP/1.1 413")
        silent = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(30)]
        try:
            for s in silent[:5]:
                assert s.recv(10) == b""  # closed by the server after --read-timeout, not held open
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as resp:
                assert resp.status == 200
        finally:
            for s in silent:
                s.close()
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)
