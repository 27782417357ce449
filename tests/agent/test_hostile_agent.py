"""The agent's /metrics server against slow, half-open and too many clients: connections beyond the
cap are closed at once, silent ones are dropped after the read timeout, running out of file
descriptors neither spins nor floods the log, and the server answers afterwards."""

from __future__ import annotations

import re
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest
from prometheus_client import CollectorRegistry, Gauge

from bottleneck_map.agent.server import MetricsServer


@pytest.fixture
def registry():
    reg = CollectorRegistry()
    Gauge("bmap_test_value", "a value", registry=reg).set(1)
    return reg


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def _outcome(sock: socket.socket) -> str:
    """How the server ended this connection: 'closed' (EOF or reset) or 'open' (still open after 5 s)."""
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return "open"
    except ConnectionResetError:
        pass
    return "closed"


def test_half_open_and_slow_connections_are_capped_and_timed_out(registry):
    server = MetricsServer(registry, port=0, read_timeout_s=0.5, max_connections=8).start()
    socks = []
    try:
        t0 = time.monotonic()
        for i in range(40):
            s = socket.create_connection((server.host, server.port), timeout=5)
            if i % 2:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            socks.append(s)
        outcomes = [_outcome(s) for s in socks]
        assert outcomes == ["closed"] * 40
        assert time.monotonic() - t0 < 5 + 40 * 0.1  # none was held until the client's own 5 s timeout
        assert "bmap_test_value 1.0" in scrape(server.url)
    finally:
        for s in socks:
            s.close()
        server.stop()


def test_a_client_trickling_its_headers_is_cut_off_at_the_read_timeout(registry):
    """Each byte arrives well within the per-read timeout; the request head as a whole does not."""
    server = MetricsServer(registry, port=0, read_timeout_s=1.0).start()
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
    try:
        with socket.create_connection((server.host, server.port), timeout=10) as s:
            t0 = time.monotonic()
            closed_after = None
            for byte in head:
                try:
                    s.sendall(bytes([byte]))
                except OSError:  # reset: the server closed the connection
                    closed_after = time.monotonic() - t0
                    break
                time.sleep(0.25)
                if _peer_closed(s):
                    closed_after = time.monotonic() - t0
                    break
            assert closed_after is not None and closed_after < 3.0, closed_after
        assert "bmap_test_value 1.0" in scrape(server.url)  # and it still serves
    finally:
        server.stop()


def _peer_closed(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        s.setblocking(True)


def test_bad_limits_are_refused(registry):
    for kw in ({"read_timeout_s": 0}, {"max_connections": 0}, {"backlog": 0}):
        with pytest.raises(ValueError):
            MetricsServer(registry, port=0, **kw)


@pytest.mark.slow
def test_running_out_of_file_descriptors_neither_spins_nor_floods_the_log(tmp_path):
    log_path = tmp_path / "agent.log"

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    cmd = [sys.executable, "-m", "bottleneck_map.cli", "agent", "--port", "0", "--max-connections", "500",
           "--read-timeout", "3", "--interval", "1"]  # fmt: skip
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, stderr=log, preexec_fn=limit_files)
    socks = []
    try:
        deadline = time.monotonic() + 60
        while not (m := re.search(r"agent serving (\S+)", log_path.read_text())):
            assert p.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        url = m.group(1)
        host, port = url.removeprefix("http://").removesuffix("/metrics").rsplit(":", 1)
        for _ in range(100):  # more than 64 descriptors allow: accept fails with EMFILE
            socks.append(socket.create_connection((host, int(port)), timeout=10))
        proc = psutil.Process(p.pid)
        proc.cpu_percent()
        time.sleep(1.0)
        assert proc.cpu_percent() < 50  # the accept loop waits between tries instead of spinning
        for s in socks:
            s.close()
        socks = []
        time.sleep(3.5)  # the held connections time out
        assert "bmap_host_cpu_utilization_ratio" in scrape(url)
    finally:
        for s in socks:
            s.close()
        p.send_signal(signal.SIGINT)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
    log = log_path.read_text()
    assert log.count("cannot accept a metrics connection") == 1, log[-2000:]
    assert len(log) < 5_000, log[-2000:]


@pytest.mark.parametrize(("flag", "value"), [("--read-timeout", "0"), ("--max-connections", "0"), ("--backlog", "0")])
def test_agent_refuses_bad_limits_naming_the_flag(flag, value):
    from typer.testing import CliRunner

    from bottleneck_map.cli import app

    r = CliRunner().invoke(app, ["agent", "--port", "0", flag, value])
    assert r.exit_code == 2 and flag in r.output, r.output
