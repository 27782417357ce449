"""`collect`'s receiver limits: body size on the wire, inflated size, body read time."""

from __future__ import annotations

import gzip
import json
import socket
import time
import zlib
from pathlib import Path

import httpx
import pytest
from factories import otlp_json, otlp_span

from bottleneck_map.bundle import BundleWriter
from bottleneck_map.ingest.collect import TraceSink, collect_meta, otlp_app
from bottleneck_map.ingest.http_server import UvicornServer
from bottleneck_map.ingest.otlp import OtlpError, TooLarge, decompress

JSON = {"content-type": "application/json"}


def gzip_bomb(inflated: int) -> bytes:
    """One gzip member of ``inflated`` zero bytes (about 1/1000 of that on the wire)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * (1 << 20)
    return b"".join([*(c.compress(zeros) for _ in range(inflated >> 20)), c.flush()])


def test_decompress_round_trips_and_stops_at_the_limit():
    data = bytes(range(256)) * 4000
    assert decompress(gzip.compress(data), "gzip") == data
    assert decompress(gzip.compress(data) + gzip.compress(b"tail"), "gzip") == data + b"tail"  # two members
    assert decompress(zlib.compress(data), "deflate") == data
    assert decompress(data, None) == data
    assert decompress(gzip.compress(data), "gzip", max_bytes=len(data)) == data
    with pytest.raises(TooLarge, match="more than 1000 bytes"):
        decompress(gzip.compress(data), "gzip", max_bytes=1000)
    with pytest.raises(TooLarge):  # a bomb of many small members is stopped too
        decompress(gzip.compress(b"\0" * 100_000) * 50, "gzip", max_bytes=1_000_000)
    with pytest.raises(OtlpError, match="ends before the end"):
        decompress(gzip.compress(data)[:-20], "gzip")
    with pytest.raises(OtlpError, match="not valid deflate"):
        decompress(b"not deflate", "deflate")
    with pytest.raises(OtlpError, match="unsupported Content-Encoding"):
        decompress(b"x", "br")


@pytest.fixture
def limited(tmp_path: Path):
    writer = BundleWriter(tmp_path / "bundle", collect_meta(), flush_interval_s=0.2)
    sink = TraceSink(writer)
    app = otlp_app(sink, max_body_bytes=200_000, max_inflated_bytes=1_000_000, body_timeout_s=1.0)
    with UvicornServer(app) as server:
        yield server, sink
    writer.close()


def raw_request(port: int, head: bytes, body: bytes = b"", timeout_s: float = 20.0) -> bytes:
    """Send a request by hand and read the answer until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(head + body)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_a_declared_oversize_body_is_refused_before_it_is_sent(limited):
    server, sink = limited
    head = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 300000000\r\n\r\n"
    answer = raw_request(server.port, head)  # no body byte sent: only the header decides
    assert answer.startswith(b"HTTP/1.1 413") and b"Content-Length 300000000" in answer


def test_a_chunked_body_is_cut_off_when_it_passes_the_limit(limited):
    server, sink = limited
    head = (
        b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(head)
        try:
            for _ in range(1000):  # up to 64 MB if the server kept reading
                s.sendall(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
                sent += 0x10000
        except OSError:
            pass  # the server closed the connection
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert sent < 16_000_000


def test_a_compression_bomb_gets_413_and_the_receiver_goes_on(limited):
    server, sink = limited
    with httpx.Client(timeout=30) as client:
        r = client.post(
            f"{server.url}/v1/traces", content=gzip_bomb(64 << 20), headers={**JSON, "content-encoding": "gzip"}
        )
        assert r.status_code == 413 and "inflates to more than 1000000 bytes" in r.text
        r = client.post(
            f"{server.url}/v1/traces",
            content=gzip.compress(json.dumps(otlp_json([otlp_span(0), otlp_span(1)])).encode()),
            headers={**JSON, "content-encoding": "gzip"},
        )
        assert r.status_code == 200
    assert sink.requests == 2


def test_a_body_not_received_in_time_gets_408(limited):
    server, sink = limited
    head = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    t0 = time.monotonic()
    answer = raw_request(server.port, head, b"{")  # 99 bytes never come
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - t0 < 15  # the 1 s limit, with ample room for a busy machine


def test_collect_refuses_non_positive_limits(tmp_path):
    from typer.testing import CliRunner

    from bottleneck_map.cli import app

    for flag in ("--max-body-bytes", "--max-inflated-bytes", "--body-timeout"):
        r = CliRunner().invoke(app, ["collect", "--out", str(tmp_path / "b"), "--port", "0", flag, "0"])
        assert r.exit_code == 2 and flag in r.output
