"""/metrics over HTTP: loopback by default, TLS, basic auth."""

from __future__ import annotations

import base64
import socket
import ssl
import urllib.error
import urllib.request

import pytest
from agent_helpers import free_port
from prometheus_client import CollectorRegistry

from bottleneck_map.agent.collector import AgentCollector
from bottleneck_map.agent.host import HostSource
from bottleneck_map.agent.sampler import Sampler
from bottleneck_map.agent.server import DEFAULT_HOST, BasicAuth, MetricsServer


@pytest.fixture
def registry():
    s = Sampler(interval_s=1, sources=[HostSource()])
    s.sample_once()
    reg = CollectorRegistry(auto_describe=False)
    reg.register(AgentCollector(s, "prometheus", hostname="node-1"))
    return reg


def get(url: str, auth: str | None = None, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_binds_loopback_by_default(registry):
    server = MetricsServer(registry, port=0).start()
    try:
        assert DEFAULT_HOST == "127.0.0.1" and server.host == "127.0.0.1"
        status, body = get(server.url)
        assert status == 200 and "bmap_host_cpu_utilization_ratio" in body
    finally:
        server.stop()


def raw_request(server: MetricsServer, request: bytes) -> bytes:
    """The whole reply to one request, read until the server closes the connection."""
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_head_answers_like_get_without_a_body(registry):
    server = MetricsServer(registry, port=0, basic_auth=BasicAuth("scraper", "pw")).start()
    auth = b"Authorization: Basic " + base64.b64encode(b"scraper:pw") + b"\r\n"
    try:
        for path, code, has_body in ((b"/metrics", b"200", True), (b"/", b"200", True)):
            get_reply = raw_request(server, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
            head, _, get_body = get_reply.partition(b"\r\n\r\n")
            assert head.split()[1] == code and (b"bmap_host_cpu_utilization_ratio" in get_body) == has_body
            reply = raw_request(server, b"HEAD " + path + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
            head, sep, body = reply.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            headers = dict(line.split(b": ", 1) for line in lines[1:])
            assert lines[0].split()[1] == code and sep and body == b""
            assert headers[b"Content-Type"].startswith(b"text/plain")
            assert int(headers[b"Content-Length"]) > 0
        # without credentials HEAD is refused like GET, still without a body
        reply = raw_request(server, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.split()[1] == b"401" and reply.endswith(b"\r\n\r\n")
    finally:
        server.stop()


def test_basic_auth(registry):
    server = MetricsServer(registry, port=free_port(), basic_auth=BasicAuth.parse("scraper:s3:cret")).start()
    try:
        status, _ = get(server.url)
        assert status == 401
        status, _ = get(server.url, auth="scraper:wrong")
        assert status == 401
        status, body = get(server.url, auth="scraper:s3:cret")
        assert status == 200 and "bmap_agent_samples_total" in body
    finally:
        server.stop()


@pytest.mark.parametrize("text", ["nocolon", ":pass", "user:", ""])
def test_basic_auth_needs_user_and_password(text):
    with pytest.raises(ValueError):
        BasicAuth.parse(text)


def test_tls_serves_https_only(registry, tls_files):
    cert, key = tls_files
    server = MetricsServer(registry, port=0, tls_cert=str(cert), tls_key=str(key), basic_auth=BasicAuth("u", "p"))
    server.start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(cert))
        status, body = get(server.url, auth="u:p", context=ctx)
        assert status == 200 and "bmap_host_memory_total_bytes" in body
        status, _ = get(server.url, context=ctx)
        assert status == 401
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            get(server.url.replace("https://", "http://"))
        status, _ = get(server.url, auth="u:p", context=ctx)  # still serving after a bad client
        assert status == 200
    finally:
        server.stop()


def test_tls_needs_both_files(registry, tls_files):
    with pytest.raises(ValueError):
        MetricsServer(registry, port=0, tls_cert=str(tls_files[0]))


def test_stop_before_start_does_not_hang(registry):
    MetricsServer(registry, port=0).stop()


def test_ipv6_loopback_when_available(registry):
    import socket

    if not socket.has_ipv6:
        pytest.skip("no IPv6 support in this Python build")
    try:
        server = MetricsServer(registry, host="::1", port=0)
    except OSError as exc:
        pytest.skip(f"IPv6 loopback not available here: {exc}")
    server.start()
    try:
        assert server.url.startswith("http://[::1]:")
        status, body = get(server.url)
        assert status == 200 and "bmap_host_cpu_utilization_ratio" in body
    finally:
        server.stop()


def test_the_accept_loop_waits_without_polling_and_stops_at_once(registry, monkeypatch):
    import socketserver
    import time

    timeouts = []

    class Recording(socketserver._ServerSelector):  # the selector serve_forever builds
        def select(self, timeout=None):
            timeouts.append(timeout)
            return super().select(timeout)

    monkeypatch.setattr(socketserver, "_ServerSelector", Recording)
    srv = MetricsServer(registry, port=0).start()
    assert get(srv.url)[0] == 200
    time.sleep(0.2)
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 1.0  # woken by a connection, not by a poll timer
    assert not srv._thread.is_alive()
    assert timeouts and all(t is None for t in timeouts)  # select() never times out: no wake-ups while idle
    with pytest.raises(OSError):
        urllib.request.urlopen(srv.url, timeout=2)
