"""`collect` as a real process on loopback, under hostile and careless clients.

After each input the process must be alive, its memory within a stated bound, and, once it is
stopped (SIGTERM, as a service manager stops it), the bundle must validate and hold every request
that was acknowledged with 200.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from factories import otlp_json, otlp_span
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bottleneck_map.bundle import read_bundle
from bottleneck_map.validate import validate_bundle

JSON = {"content-type": "application/json"}


class Collect:
    """``bottleneck-map collect`` in a subprocess on a free port."""

    def __init__(self, out: Path, *flags: str) -> None:
        self.out = out
        cmd = [sys.executable, "-m", "bottleneck_map.cli", "collect", "--out", str(out), "--port", "0", *flags]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        url = threading.Event()
        self.url = ""

        def read() -> None:
            for line in self.proc.stderr:
                self.stderr.append(line)
                m = re.search(r"receiver on (http://\S+)/v1/traces", line)
                if m:
                    self.url = m[1]
                    url.set()
            url.set()

        threading.Thread(target=read, daemon=True).start()
        if not url.wait(60) or not self.url:
            self.proc.kill()
            raise RuntimeError(f"collect did not start: {''.join(self.stderr)}")
        self.ps = psutil.Process(self.proc.pid)
        self.acked: set[str] = set()  # request ids acknowledged with 200

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def post(self, client: httpx.Client, body: bytes, ids: list[str] = (), **headers: str) -> httpx.Response:
        r = client.post(f"{self.url}/v1/traces", content=body, headers={**JSON, **headers})
        if r.status_code == 200:
            self.acked.update(ids)
        return r

    def post_good(self, client: httpx.Client, first: int, n: int = 2) -> None:
        spans = [otlp_span(i) for i in range(first, first + n)]
        r = self.post(client, json.dumps(otlp_json(spans)).encode(), [f"cmpl-{i:04d}" for i in range(first, first + n)])
        assert r.status_code == 200, r.text

    def stop(self, timeout_s: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def collect(tmp_path: Path):
    started: list[Collect] = []

    def start(*flags: str) -> Collect:
        c = Collect(tmp_path / f"bundle{len(started)}", *flags)
        started.append(c)
        return c

    yield start
    for c in started:
        c.kill()


def assert_complete(c: Collect) -> None:
    """The bundle of a stopped collect: closed, valid, and every acknowledged request in it."""
    report = validate_bundle(c.out)
    assert report.valid, report.errors
    b = read_bundle(c.out)
    assert "end_ns" in b.meta and b.meta["ingest"]["otlp"]["requests"] == len(c.acked)
    assert set(b.requests["request_id"]) == c.acked


def test_sigterm_flushes_every_acknowledged_span(collect):
    c = collect()
    with httpx.Client(timeout=30) as client:
        for k in range(5):
            c.post_good(client, first=2 * k)
    assert c.stop() == 0, "".join(c.stderr)
    assert_complete(c)
    assert "collect: 10 requests" in "".join(c.stderr)


def gzip_member_bomb(inflated: int, level: int = 9) -> bytes:
    """One gzip member of ``inflated`` zero bytes."""
    c = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * (1 << 20)
    return b"".join([*(c.compress(zeros) for _ in range(inflated >> 20)), c.flush()])


def pb_span(**fields) -> bytes:
    """A protobuf export request of one llm_request span; ``attr_*`` fields become attributes."""
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x07" * 16, b"\x08" * 8, "llm_request"
    span.start_time_unix_nano = 1_763_900_000_000_000_000
    span.end_time_unix_nano = span.start_time_unix_nano + 10**9
    for key, value in fields.items():
        if key.startswith("attr_"):
            kv = span.attributes.add()
            kv.key = key[5:].replace("__", ".")
            if isinstance(value, float):
                kv.value.double_value = value
            else:
                kv.value.int_value = value
        else:
            setattr(span, key, value)
    return req.SerializeToString()


def raw(c: Collect, head: bytes, chunks: Iterator[bytes] = iter(()), timeout_s: float = 60) -> bytes:
    """Send a request by hand (headers, then body pieces until the server hangs up); the answer."""
    host, port = c.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as s:
        s.sendall(head)
        try:
            for chunk in chunks:
                s.sendall(chunk)
        except OSError:
            pass  # the server answered and closed while the body was still coming
        answer = b""
        try:
            while piece := s.recv(65536):
                answer += piece
        except ConnectionResetError:
            pass
    return answer


RSS_BOUND = 160 * 1024 * 1024  # growth over the idle receiver allowed at any point (peak included)


def hostile_inputs() -> Iterator[tuple[str, Callable[[Collect, httpx.Client], None]]]:
    """(name, send) pairs; ``send`` delivers one hostile request and checks its answer."""
    head = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"

    def declared_oversize(c, client):
        assert raw(c, head + b"Content-Length: 300000000\r\n\r\n").startswith(b"HTTP/1.1 413")

    def chunked_oversize(c, client):
        piece = b"100000\r\n" + b"x" * 0x100000 + b"\r\n"
        answer = raw(c, head + b"Transfer-Encoding: chunked\r\n\r\n", (piece for _ in range(64)))
        assert answer.startswith(b"HTTP/1.1 413")

    def slow_body(c, client):
        def trickle():
            for _ in range(3):
                yield b" "
                time.sleep(0.5)

        answer = raw(c, head + b"Content-Length: 1000\r\n\r\n", trickle())  # never completes
        assert answer.startswith(b"HTTP/1.1 408")

    def refused(status, body, **headers):
        def send(c, client):
            r = c.post(client, body, **headers)
            assert r.status_code == status, (r.status_code, r.text[:200])
            assert "Traceback" not in r.text

        return send

    yield "declared oversize", declared_oversize
    yield "chunked oversize", chunked_oversize
    yield "slow body", slow_body
    yield "gzip bomb", refused(413, gzip_member_bomb(300 << 20), **{"content-encoding": "gzip"})
    yield (
        "gzip bomb of many members",
        refused(413, gzip.compress(b"\0" * (10 << 20)) * 300, **{"content-encoding": "gzip"}),
    )
    yield "deflate bomb", refused(413, zlib.compress(b"\0" * (200 << 20), 9), **{"content-encoding": "deflate"})
    yield "deep JSON", refused(400, b"[" * 200_000 + b"]" * 200_000)
    yield "deep object", refused(400, b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
    yield "resourceSpans a number", refused(400, b'{"resourceSpans": 5}')
    yield "spans a number", refused(400, b'{"resourceSpans": [{"scopeSpans": [{"spans": 7}]}]}')
    yield (
        "Infinity latency",
        refused(
            400, json.dumps(otlp_json([otlp_span(90, **{"gen_ai.latency.e2e": {"doubleValue": math.inf}})])).encode()
        ),
    )
    yield (
        "start beyond int64",
        refused(
            400,
            json.dumps(
                otlp_json([{**otlp_span(91), "startTimeUnixNano": str(2**64), "endTimeUnixNano": str(2**64)}])
            ).encode(),
        ),
    )
    yield (
        "tokens beyond int32",
        refused(
            400,
            json.dumps(otlp_json([otlp_span(92, **{"gen_ai.usage.prompt_tokens": {"intValue": str(2**31)}})])).encode(),
        ),
    )
    yield "invalid UTF-8", refused(400, b'{"resourceSpans": ["\xff\xfe"]}')
    yield (
        "lone surrogate id",
        refused(
            400, json.dumps(otlp_json([otlp_span(93, **{"gen_ai.request.id": {"stringValue": "\ud800"}})])).encode()
        ),
    )
    yield "unknown encoding", refused(400, b"{}", **{"content-encoding": "br"})
    yield "unknown type", refused(400, b"{}", **{"content-type": "text/plain"})
    pb = {"content-type": "application/x-protobuf"}
    yield "protobuf garbage", refused(400, b"\xff" * 1000, **pb)
    yield (
        "protobuf start beyond int64",
        refused(400, pb_span(start_time_unix_nano=2**64 - 1, end_time_unix_nano=2**64 - 1), **pb),
    )
    yield "protobuf NaN latency", refused(400, pb_span(attr_gen_ai__latency__time_to_first_token=math.nan), **pb)
    yield "protobuf negative tokens", refused(400, pb_span(attr_gen_ai__usage__completion_tokens=-5), **pb)
    yield "protobuf end before start", refused(400, pb_span(end_time_unix_nano=1), **pb)


@pytest.mark.slow
def test_hostile_clients_leave_collect_alive_bounded_and_its_bundle_complete(collect):
    c = collect("--body-timeout", "1")
    with httpx.Client(timeout=60) as client:
        c.post_good(client, first=0)
        base = c.rss()
        for k, (name, send) in enumerate(hostile_inputs(), start=1):
            send(c, client)
            assert c.proc.poll() is None, f"collect died after {name}: {''.join(c.stderr)}"
            assert c.rss() - base < RSS_BOUND, f"{name}: RSS {c.rss() >> 20} MiB, idle {base >> 20} MiB"
            c.post_good(client, first=2 * k)  # still answering, and what it acknowledges is kept
        # a batch with one good and one unstorable span is refused whole; its corrected retry is kept
        good, bad = otlp_span(500), otlp_span(501, **{"gen_ai.latency.e2e": {"doubleValue": -1.0}})
        assert c.post(client, json.dumps(otlp_json([good, bad])).encode(), ["cmpl-0500"]).status_code == 400
        assert c.post(client, json.dumps(otlp_json([good])).encode(), ["cmpl-0500"]).status_code == 200
        # many half-open connections (a request line and no more) do not stop it answering
        host, port = c.url.removeprefix("http://").split(":")
        half_open = []
        try:
            for _ in range(200):
                s = socket.create_connection((host, int(port)), timeout=30)
                s.sendall(b"POST /v1/traces HTTP/1.1\r\n")
                half_open.append(s)
            c.post_good(client, first=600)
        finally:
            for s in half_open:
                s.close()
        assert c.proc.poll() is None
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{c.proc.pid}/status").read_text())[1]) * 1024
    assert peak - base < RSS_BOUND, f"peak RSS {peak >> 20} MiB, idle {base >> 20} MiB"
    assert c.stop() == 0, "".join(c.stderr)
    assert_complete(c)


def test_half_open_and_surplus_connections_are_closed_not_held(collect):
    c = collect("--header-timeout", "1", "--max-connections", "20")
    host, port = c.url.removeprefix("http://").split(":")
    conns = []
    try:
        for _ in range(30):  # a request line and no more: each would hold a file descriptor for good
            s = socket.create_connection((host, int(port)), timeout=30)
            s.sendall(b"POST /v1/traces HTTP/1.1\r\n")
            conns.append(s)
        answers = []
        for s in conns:
            answer = b""
            try:
                while piece := s.recv(4096):
                    answer += piece
            except ConnectionResetError:  # closed at once with our request line unread
                answer = answer or b"reset"
            answers.append(answer.split(b"\r\n", 1)[0])
    finally:
        for s in conns:
            s.close()
    refused = {b"HTTP/1.1 503 Service Unavailable", b"reset"}  # over the cap: closed at once
    assert sum(a in refused for a in answers) >= 10, answers
    assert answers.count(b"HTTP/1.1 408 Request Timeout") >= 1, answers  # the rest: after the header timeout
    assert set(answers) <= refused | {b"HTTP/1.1 408 Request Timeout"}, answers
    with httpx.Client(timeout=30) as client:
        c.post_good(client, first=0)
    assert c.proc.poll() is None
    assert c.stop() == 0, "".join(c.stderr)
    assert_complete(c)
