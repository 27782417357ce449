"""The app over HTTP (Flask test client) and the dashboard command: security defaults, ids not paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bottleneck_map.bundle import BundleWriter
from bottleneck_map.dashboard.app import create_app
from bottleneck_map.dashboard.bundles import BundleRegistry
from bottleneck_map.dashboard.store import Store

TAB_OUTPUT = "..tab-content.children...run-summary.children...bundle-sig.data.."


@pytest.fixture(scope="module")
def app(bundles: dict[str, Path]):  # noqa: ANN201
    return create_app([bundles["busy"], bundles["light"]])


def _render_tab(client: Any, tab: str, bundle_value: Any) -> Any:
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
            {"id": "compare-store", "property": "data", "value": None},
        ],
        "changedPropIds": ["bundle.value"],
    }
    return client.post("/_dash-update-component", json=body)


def test_debug_is_off_and_the_page_serves(app) -> None:  # noqa: ANN001
    assert app.server.debug is False
    client = app.server.test_client()
    resp = client.get("/")
    assert resp.status_code == 200
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_the_browser_sees_ids_never_paths(app, bundles: dict[str, Path]) -> None:  # noqa: ANN001
    layout = app.server.test_client().get("/_dash-layout").get_data(as_text=True)
    for p in bundles.values():
        assert str(p) not in layout and str(p.resolve()) not in layout
    store: Store = app.server.config["BMAP_STORE"]
    ids = {e.id for e in store.registry.entries()}
    assert all(f'"{i}"' in layout for i in ids)


@pytest.mark.parametrize("value", ["/etc", "../../etc/passwd", "busy", None, 7])
def test_a_path_or_unknown_id_from_the_browser_opens_nothing(app, bundles: dict[str, Path], value: Any) -> None:  # noqa: ANN001
    value = str(bundles["busy"]) if value == "busy" else value
    resp = _render_tab(app.server.test_client(), "map", value)
    assert resp.status_code == 200
    text = resp.get_data(as_text=True)
    assert "This bundle is not available." in text
    assert "map-graph" not in text


def test_a_known_id_renders_the_view(app) -> None:  # noqa: ANN001
    store: Store = app.server.config["BMAP_STORE"]
    bid = store.registry.entries()[1].id
    resp = _render_tab(app.server.test_client(), "timeline", bid)
    assert resp.status_code == 200
    assert "timeline-graph" in resp.get_data(as_text=True)


def test_assets_do_not_leave_their_folder(app) -> None:  # noqa: ANN001
    client = app.server.test_client()
    assert client.get("/assets/bottleneck-map.css").status_code == 200
    for url in ("/assets/../app.py", "/assets/..%2fapp.py", "/assets/%2e%2e/%2e%2e/pyproject.toml"):
        assert client.get(url).status_code == 404, url


def test_first_view_is_compressed(app) -> None:  # noqa: ANN001
    client = app.server.test_client()
    page = client.get("/")
    js = [
        line.split('src="')[1].split('"')[0] for line in page.get_data(as_text=True).split("<script") if 'src="' in line
    ]
    resp = client.get(js[0], headers={"Accept-Encoding": "gzip, br"})
    assert resp.headers.get("Content-Encoding") in ("gzip", "br")


def test_the_grid_library_is_left_out_of_the_page_and_served_on_demand(app) -> None:  # noqa: ANN001
    client = app.server.test_client()
    page = client.get("/").get_data(as_text=True)
    scripts = [chunk.split('"')[0] for chunk in page.split('<script src="')[1:]]
    assert scripts and not any("dash_ag_grid" in s for s in scripts)
    assert any("dash_renderer" in s for s in scripts) and any("dash_core_components" in s for s in scripts)
    meta = page.split('<meta name="bmap-lazy-scripts" content="')[1].split('"')[0]
    lib, urls = meta.split("=", 1)
    assert lib == "dash_ag_grid"
    for url in urls.split(","):
        resp = client.get(url)
        assert resp.status_code == 200 and b"AgGrid" in resp.get_data()
    assert client.get("/assets/lazy-libraries.js").status_code == 200


def test_live_store_reanalyses_when_the_bundle_grows(bundles: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    path = tmp_path / "growing"
    shutil.copytree(bundles["light"], path)
    store = Store(BundleRegistry([path]), live=True)
    bid = store.registry.default.id
    first = store.get(bid)
    assert store.get(bid) is first, "unchanged bundle: cached"
    row = first.tables.requests.slice(0, 1).to_pylist()[0]
    row["request_id"] = "req-extra"
    with BundleWriter(path, None) as w:
        w.add_request(row)
    second = store.get(bid)
    assert second is not first
    assert second.tables.requests.num_rows == first.tables.requests.num_rows + 1
    static = Store(BundleRegistry([path]), live=False)
    assert static.get(bid) is static.get(bid)


def _run_cli(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> tuple[Any, dict[str, Any]]:
    import waitress.server

    from bottleneck_map.cli import app as cli

    seen: dict[str, Any] = {}

    class Server:
        def run(self) -> None:
            seen["ran"] = True

    def create_server(application: Any, **kw: Any) -> Server:
        seen.update(kw, application=application)
        return Server()

    monkeypatch.setattr(waitress.server, "create_server", create_server)
    return CliRunner().invoke(cli, ["dashboard", *args]), seen


def test_cli_serves_with_waitress_on_loopback_by_default(
    monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path]
) -> None:
    import flask

    result, seen = _run_cli(monkeypatch, [str(bundles["busy"])])
    assert result.exit_code == 0, result.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8050 and seen["ran"]
    assert isinstance(seen["application"], flask.Flask) and not seen["application"].debug


def test_cli_port_in_use_exits_2_naming_the_flag_before_analysing(bundles: dict[str, Path]) -> None:
    import socket

    from bottleneck_map.cli import app as cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["dashboard", str(bundles["light"]), "--port", str(port)])
    assert result.exit_code == 2, result.output  # a usage error, as the agent's busy port
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and "--port" in result.output
    assert "analysing" not in result.output and "Traceback" not in result.output


def test_cli_refuses_a_bundle_validate_rejects_unless_forced(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from test_hostile_dashboard import invalid_bundle

    bad = invalid_bundle(tmp_path / "invalid")
    result, seen = _run_cli(monkeypatch, [str(bad)])
    assert result.exit_code == 1 and "ran" not in seen
    assert "max_tokens has negative values" in result.output and "--force" in result.output
    result, seen = _run_cli(monkeypatch, [str(bad), "--force"])
    assert result.exit_code == 0 and seen["ran"], result.output
    assert "warning" in result.output and "max_tokens has negative values" in result.output


def test_cli_usage_errors_name_the_flag(monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path]) -> None:
    for args, flag in (
        (["--port", "70000"], "--port"),
        (["--slo", "ttft=fast"], "--slo"),
        (["--window", "0"], "--window"),
    ):
        result, _ = _run_cli(monkeypatch, [str(bundles["busy"]), *args])
        assert result.exit_code == 2, result.output
        assert flag in result.output


def test_cli_bad_bundle_exits_1_with_a_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result, seen = _run_cli(monkeypatch, [str(tmp_path)])
    assert result.exit_code == 1
    assert "not a bundle" in result.output and not seen
    assert "Traceback" not in result.output


def test_cli_default_opens_the_newest_run(
    monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    runs = tmp_path / "bmap-runs"
    shutil.copytree(bundles["light"], runs / "r1")
    monkeypatch.chdir(tmp_path)
    result, seen = _run_cli(monkeypatch, [])
    assert result.exit_code == 0, result.output
    assert "r1" in result.output and seen["host"] == "127.0.0.1"
    json.loads((runs / "r1" / "meta.json").read_text())


def test_a_live_run_without_requests_yet_waits_then_shows(bundles: dict[str, Path], tmp_path: Path) -> None:
    from bottleneck_map.bundle import read_bundle
    from bottleneck_map.dashboard import layout

    src = read_bundle(bundles["light"])
    path = tmp_path / "starting"
    writer = BundleWriter(path, src.meta)
    store = Store(BundleRegistry([path]), live=True)
    bid = store.registry.default.id
    assert store.get(bid) is None
    assert "no requests" in store.error(bid)
    waiting = str(layout.view("map", None, store, bid=bid).to_plotly_json())
    assert "cannot be analysed yet" in waiting and "refreshes by itself" in waiting
    for row in src.table("requests").slice(0, 20).to_pylist():
        writer.add_request(row)
    writer.flush()
    loaded = store.get(bid)
    assert loaded is not None and loaded.tables.requests.num_rows == 20 and store.error(bid) is None
    writer.close()


def test_the_real_command_serves_on_loopback_only(bundles: dict[str, Path]) -> None:
    """`bottleneck-map dashboard BUNDLE --port P` as a user runs it: listening on 127.0.0.1 only."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    import psutil
    from dashboard_server import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bottleneck_map.cli", "dashboard", str(bundles["light"]), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    assert resp.status == 200 and resp.headers["Server"] == "waitress"
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "dashboard did not start"
                time.sleep(0.3)
        listening = {
            c.laddr.ip for c in psutil.Process(proc.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
        }
        assert listening == {"127.0.0.1"}
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0].decode()
    assert f"http://127.0.0.1:{port}/" in out
    assert "Debug mode: on" not in out and "Traceback" not in out
    assert "development server" not in out  # Flask's own server warns it is not for production
