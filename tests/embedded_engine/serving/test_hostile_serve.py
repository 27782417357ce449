"""`serve` against hostile and careless clients: no request, however formed, stops the engine for
the others; every refusal is a 4xx in OpenAI's error shape; afterwards the server is idle again
(no running or waiting request, every KV block free) and still answers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bottleneck_map.bundle import read_bundle
from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
from bottleneck_map.embedded_engine.serving.limits import ServeLimits, quiet_accept_errors
from bottleneck_map.embedded_engine.serving.server import ArrivalH11Protocol
from bottleneck_map.embedded_engine.serving.server_cli import build_server
from bottleneck_map.ingest.http_server import UvicornServer
from bottleneck_map.validate import validate_bundle

NUM_KV_BLOCKS = 128
CONFIG = EngineConfig(device="cpu", max_num_seqs=8, num_kv_blocks=NUM_KV_BLOCKS, max_model_len=256)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    bundle = tmp_path_factory.mktemp("hostile") / "bundle"
    served = build_server(
        model="tiny", engine_config=CONFIG, instance="hostile-0", bundle=bundle, measure_device=False, threads=1
    )
    http = UvicornServer(served.app)
    http.server.config.http = ArrivalH11Protocol
    http.start()
    yield http, served, bundle
    http.stop()
    served.close()


def wait_idle(served, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while (snap := served.snapshot()).unfinished or snap.delivering:
        assert time.monotonic() < deadline, f"engine did not go idle: {snap}"
        time.sleep(0.02)
    return snap


def assert_idle_and_serving(http, served) -> None:
    snap = wait_idle(served)
    assert snap.running == 0 and snap.waiting == 0
    assert snap.kv_blocks_used == 0 and snap.kv_blocks_free == NUM_KV_BLOCKS
    assert httpx.get(http.url + "/health").status_code == 200
    gauges = {
        s.name: s.value
        for fam in text_string_to_metric_families(httpx.get(http.url + "/metrics").text)
        for s in fam.samples
        if s.name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
    }
    assert gauges == {"vllm:num_requests_running": 0, "vllm:num_requests_waiting": 0, "vllm:kv_cache_usage_perc": 0}
    r = httpx.post(
        http.url + "/v1/completions",
        json={"model": "tiny", "prompt": "still here", "max_tokens": 3, "ignore_eos": True},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


HOSTILE = [
    math.nan, math.inf, -math.inf, 1e-300, -1e-300, 1e300, -1e300, 0, -1, 0.5, 1, 2.5,
    2**63, -(2**63) - 1, 2**64, 10**30, "1", True, [], {},
]  # fmt: skip
FIELDS = [
    "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "seed", "max_tokens", "stop", "stop_token_ids", "n", "ignore_eos",
]  # fmt: skip


async def _fuzz(url: str) -> list[tuple[str, object, int, dict]]:
    """Every hostile value in every sampling field (non-streaming and streaming), while well-formed
    streaming clients run beside them; returns (field, value, status, body) of the fuzzed requests
    and checks that every well-formed request completed."""
    done = asyncio.Event()
    good: list[str] = []

    async def well_formed(client: httpx.AsyncClient) -> None:
        body = {"model": "tiny", "prompt": "a steady client", "max_tokens": 8, "ignore_eos": True, "stream": True}
        body["temperature"] = 0.8
        while not done.is_set():
            async with client.stream("POST", url + "/v1/completions", json=body) as r:
                text = (await r.aread()).decode()
            assert r.status_code == 200, text
            assert '"finish_reason":"length"' in text and text.rstrip().endswith("data: [DONE]"), text
            good.append(text)

    results: list[tuple[str, object, int, dict]] = []
    gate = asyncio.Semaphore(8)

    async def hostile(client: httpx.AsyncClient, field: str, value: object, stream: bool) -> None:
        body = {"model": "tiny", "prompt": "fuzz", "max_tokens": 3, "temperature": 1.0, field: value}
        if stream:
            body["stream"] = True
        async with gate:
            content = json.dumps(body, allow_nan=True)  # Python's json writes (and reads) NaN and Infinity
            r = await client.post(
                url + "/v1/completions", content=content, headers={"content-type": "application/json"}
            )
        doc = r.json() if r.headers.get("content-type", "").startswith("application/json") else {"raw": r.text}
        results.append((field, value, r.status_code, doc))

    async with httpx.AsyncClient(timeout=60) as client:
        steady = [asyncio.create_task(well_formed(client)) for _ in range(4)]
        await asyncio.gather(
            *(hostile(client, f, v, stream) for f in FIELDS for v in HOSTILE for stream in (False, True))
        )
        done.set()
        await asyncio.gather(*steady)
    assert len(good) >= 4
    return results


@pytest.mark.slow
def test_fuzzed_sampling_fields_never_stop_the_engine(server):
    http, served, bundle = server
    results = asyncio.run(_fuzz(http.url))
    for field, value, status, doc in results:
        assert status in (200, 400), (field, value, status, doc)
        if status == 400:
            err = doc["error"]
            assert err["param"] == field and err["type"] == "invalid_request_error", (field, value, doc)
            assert field in err["message"]
    accepted = {(f, repr(v)) for f, v, status, _ in results if status == 200}
    # the edges the sampler computes are served, not refused
    for field, value in [("temperature", 1e-300), ("top_p", 1e-300), ("seed", -1), ("min_p", 1), ("max_tokens", 1)]:
        assert (field, repr(value)) in accepted, (field, value)
    for field, value in [("temperature", math.nan), ("top_p", math.inf), ("seed", 2**63), ("top_k", 10**30)]:
        assert (field, repr(value)) not in accepted, (field, value)
    assert ("repetition_penalty", repr(1e-300)) not in accepted
    assert_idle_and_serving(http, served)
    served.flush()
    requests = read_bundle(bundle).requests
    assert set(requests["finish_reason"]) <= {"length", "stop", "abort"}
    assert validate_bundle(bundle).valid


def test_request_with_nan_json_constants_gets_a_field_error(server):
    http, _, _ = server
    for field, raw in [("temperature", "NaN"), ("top_p", "Infinity"), ("presence_penalty", "-Infinity")]:
        content = f'{{"model": "tiny", "prompt": "x", "max_tokens": 2, "{field}": {raw}}}'
        r = httpx.post(http.url + "/v1/completions", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == field
        assert "finite" in r.json()["error"]["message"]


def test_limits_reject_their_own_bad_values():
    for kw in ({"max_body_bytes": 0}, {"header_timeout_s": 0}, {"max_connections": 0}, {"max_prompt_chars": 0}):
        with pytest.raises(ValueError):
            ServeLimits(**kw)


# -- oversize and malformed bodies, slow and half-open connections ---------------------------------

SMALL = ServeLimits(max_body_bytes=64 * 1024, header_timeout_s=0.5, body_timeout_s=0.5, max_connections=32)


@pytest.fixture(scope="module")
def guarded(tiny):
    """A server with small limits (the engine in a thread of this process: quick to start)."""
    served = build_server(
        model="tiny", loaded=tiny, engine_config=CONFIG, instance="guarded-0", measure_device=False, limits=SMALL
    )
    http = UvicornServer(served.app)
    http.server.config.http = ArrivalH11Protocol.with_limits(SMALL)
    http.start()
    yield http, served
    http.stop()
    served.close()


def _raw(url: str, data: bytes, *, read: bool = True, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection; return what the server answers until it closes."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        if not read:
            return b""
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def _head(n: int, *, chunked: bool = False) -> bytes:
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {n}"
    return f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n\r\n".encode()


def _error_of(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():  # one chunk is enough for these small answers
        body = body.split(b"\r\n", 2)[1]
    return status, json.loads(body)


def test_a_declared_oversize_body_is_refused_before_it_is_read(guarded):
    http, served = guarded
    # 300 MB declared, 4 MB sent: the 413 comes at once and the connection is closed
    status, doc = _error_of(_raw(http.url, _head(300_000_000) + b"{" * (4 << 20)))
    assert status == 413 and doc["error"]["code"] == 413 and "65536 bytes" in doc["error"]["message"]
    assert_idle_and_serving_small(http, served)


def test_a_chunked_oversize_body_is_cut_off(guarded):
    http, served = guarded
    chunk = b"x" * 16384
    # 1 MiB in 64 chunks, no terminating chunk: the server refuses after 64 KiB, then reads and drops
    # the rest (a lingering close), so the client reads the answer rather than a reset
    data = _head(0, chunked=True) + (b"4000\r\n" + chunk + b"\r\n") * 64
    status, doc = _error_of(_raw(http.url, data))
    assert status == 413 and doc["error"]["type"] == "RequestEntityTooLarge"


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ('{"model": "tiny", "prompt": "\\ud800abc", "max_tokens": 2}', "prompt", "lone surrogate"),
        ('{"model": "tiny", "messages": [{"role": "user", "content": "a\\udfffb"}]}', "messages", "lone surrogate"),
        ('{"model": "tiny", "prompt": "ok", "stop": ["\\ud83d"]}', "stop", "lone surrogate"),
        ('{"model": "tiny", "prompt": ' + "[" * 100_000 + "]" * 100_000 + "}", None, "nested too deeply"),
        ('{"model": "tiny", "prompt": "' + "word " * 9000 + '"}', "prompt", "characters"),
    ],
    ids=["surrogate-prompt", "surrogate-message", "surrogate-stop", "nested-100k", "too-many-chars"],
)
def test_malformed_text_gets_an_openai_shaped_400(guarded, body, param, words):
    http, served = guarded
    limits = dataclasses.replace(SMALL, max_body_bytes=1 << 20)  # room for the 200 KB of brackets
    served.state.limits = limits
    try:
        url = http.url + ("/v1/chat/completions" if "messages" in body else "/v1/completions")
        r = httpx.post(url, content=body.encode(), headers={"content-type": "application/json"})
    finally:
        served.state.limits = SMALL
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"] and err["type"] == "invalid_request_error"
    assert_idle_and_serving_small(http, served)


def assert_idle_and_serving_small(http, served) -> None:
    snap = wait_idle(served)
    assert snap.running == 0 and snap.waiting == 0 and snap.kv_blocks_used == 0
    r = httpx.post(http.url + "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2}, timeout=30)
    assert r.status_code == 200


def test_slow_and_half_open_connections_are_timed_out_and_capped(guarded):
    http, served = guarded
    host, port = http.url.removeprefix("http://").rsplit(":", 1)
    socks = []
    try:
        # half-open (nothing sent), stalled mid-headers, stalled mid-body: more than the cap of 32
        for i in range(60):
            s = socket.create_connection((host, int(port)), timeout=5)
            if i % 3 == 1:
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
            elif i % 3 == 2:
                s.sendall(_head(1000) + b'{"model": "tiny", ')
            socks.append(s)
        answers = []
        for s in socks:
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except TimeoutError:
                data = b"(still open)"
            except ConnectionResetError:  # refused while its bytes were unread: the close becomes a reset
                data = b"(reset)"
            answers.append(data)
    finally:
        for s in socks:
            s.close()
    assert not [a for a in answers if a == b"(still open)"], "a connection outlived the read timeouts"
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503") or a == b"(reset)"]
    timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408")]
    assert len(refused) >= 60 - 32 and len(timed_out) >= 16, answers
    assert len(refused) + len(timed_out) == 60, answers
    assert_idle_and_serving_small(http, served)


# -- the `serve` command itself: a 50 MB prompt, a low open-file limit, SIGKILL mid-load -------------


def start_serve(tmp_path, *extra: str, nofile: int | None = None):
    """``bottleneck-map serve`` in a subprocess, its log in a file; returns (process, url, log path)."""
    log_path = tmp_path / f"serve-{len(list(tmp_path.glob('serve-*.log')))}.log"
    cmd = [sys.executable, "-m", "bottleneck_map.cli", "serve", "--model", "tiny", "--device", "cpu",
           "--port", "0", "--threads", "1", "--max-num-seqs", "4", "--max-model-len", "256", *extra]  # fmt: skip

    def limit_files() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, stderr=log, preexec_fn=limit_files)
    deadline = time.monotonic() + 120
    while not (m := re.search(r"on (http://\S+)/v1", log_path.read_text())):
        assert p.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.05)
    return p, m.group(1), log_path


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_a_50mb_prompt_is_refused_at_once_and_costs_no_memory(tmp_path):
    # a body limit raised above 50 MB, so the prompt reaches the length check; an oversize body is
    # refused from its Content-Length all the same
    p, url, _ = start_serve(tmp_path, "--max-body-bytes", str(60_000_000))
    try:
        proc = psutil.Process(p.pid)
        httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "warm", "max_tokens": 2})
        rss_before = proc.memory_info().rss
        prompt = "word " * 10_000_000  # 50 MB
        body = json.dumps({"model": "tiny", "prompt": prompt, "max_tokens": 2}).encode()
        t0 = time.monotonic()
        r = httpx.post(url + "/v1/completions", content=body, headers={"content-type": "application/json"})
        elapsed = time.monotonic() - t0
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        assert "50000000 characters" in r.json()["error"]["message"]  # counted, not tokenized
        parsed_growth = proc.memory_info().rss - rss_before
        status, doc = _error_of(_raw(url, _head(300_000_000) + body[: 4 << 20]))
        assert status == 413 and doc["error"]["code"] == 413
        assert elapsed < 10  # about 0.3 s on a quiet machine (docs/limits.md); loose for a busy one
        assert parsed_growth < 200 << 20, parsed_growth  # not 25M tokens (7 GiB before the check)
        assert proc.memory_info().rss - rss_before < 200 << 20
        assert httpx.get(url + "/health").status_code == 200
    finally:
        _stop(p)


@pytest.mark.slow
def test_connections_beyond_a_low_open_file_limit_are_refused_without_a_log_flood(tmp_path):
    p, url, log_path = start_serve(tmp_path, "--header-timeout", "2", nofile=256)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    socks = []
    try:
        for _ in range(300):  # more than the open-file limit allows
            socks.append(socket.create_connection((host, int(port)), timeout=10))
        r = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2}, timeout=30)
        assert r.status_code in (200, 503)  # the cap may still be full of half-open connections
        time.sleep(2.5)  # the header timeout closes the half-open ones
        r = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2}, timeout=30)
        assert r.status_code == 200
        assert p.poll() is None
    finally:
        for s in socks:
            s.close()
        _stop(p)
    log = log_path.read_text()
    assert "open-file limit (256) allows 128 connections" in log
    # a burst of connections can still be accepted faster than refused ones are closed: then
    # asyncio's accept error appears, once (it would otherwise be logged per pending connection)
    assert log.count("Too many open files") <= 1 and len(log) < 5_000, log[-2000:]


@pytest.mark.slow
def test_sigkill_of_the_http_process_mid_load_leaves_a_bundle_that_validates(tmp_path):
    bundle = tmp_path / "bundle"
    # steps of at least 10 ms: requests are still running in the engine when the HTTP process dies
    p, url, _ = start_serve(tmp_path, "--bundle", str(bundle), "--inject", "step_host_ms=10")
    engine = next(c for c in psutil.Process(p.pid).children(recursive=True) if "spawn_main" in " ".join(c.cmdline()))
    completed: list[str] = []
    stop = threading.Event()

    def client() -> None:
        body = {"model": "tiny", "prompt": "keep going", "max_tokens": 30, "ignore_eos": True, "stream": True}
        while not stop.is_set():
            try:
                with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as r:
                    text = "".join(r.iter_text())
                if text.rstrip().endswith("[DONE]"):
                    completed.append(r.headers["x-request-id"])
            except httpx.HTTPError:
                return

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while len(completed) < 6:
            assert time.monotonic() < deadline, "no requests completed"
            time.sleep(0.05)
        p.kill()  # mid-load: streams in flight, requests queued
        p.wait(10)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        if p.poll() is None:
            p.kill()
    psutil.wait_procs([engine], timeout=30)
    report = validate_bundle(bundle)
    assert report.valid, report.errors
    loaded = read_bundle(bundle)
    assert loaded.closed
    requests = loaded.requests.set_index("request_id")
    assert set(completed) <= set(requests.index)
    assert (requests.loc[completed, "finish_reason"] == "length").all()
    assert "abort" in set(requests["finish_reason"])  # the ones in flight when the HTTP process died


def test_accept_errors_out_of_file_descriptors_are_logged_once_a_minute(caplog):
    """asyncio (CPython 3.11) logs EMFILE once per pending connection on every accept retry."""
    quiet_accept_errors()
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for _ in range(500):
                exc = OSError(24, "Too many open files")
                loop.call_exception_handler({"message": "socket.accept() out of system resource", "exception": exc})
            loop.call_exception_handler({"message": "something else", "exception": RuntimeError("x")})
    finally:
        loop.close()
    accept = [r for r in caplog.records if "out of system resource" in r.getMessage()]
    assert len(accept) == 1 and "Too many open files" in accept[0].getMessage() and accept[0].exc_info is None
    assert any(r.getMessage() == "something else" for r in caplog.records)


def test_more_messages_than_the_context_has_tokens_are_refused_before_rendering(guarded):
    http, served = guarded
    messages = [{"role": "user", "content": ""}] * (CONFIG.max_model_len + 1)
    r = httpx.post(http.url + "/v1/chat/completions", json={"model": "tiny", "messages": messages})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert "cannot fit" in r.json()["error"]["message"]


def test_a_request_failing_inside_the_engine_fails_alone(tiny, tmp_path, monkeypatch):
    """A sampling failure the checks did not foresee (here: any request seeded 666) ends that request
    with an error, to its client and in the bundle, while the others in its batches go on."""
    from bottleneck_map.embedded_engine.core import sampler

    real = sampler.sample_one

    def failing(logits, params, generator=None):
        if params.seed == 666:
            raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
        return real(logits, params, generator)

    monkeypatch.setattr(sampler, "sample_one", failing)
    bundle = tmp_path / "bundle"
    served = build_server(
        model="tiny", loaded=tiny, engine_config=CONFIG, instance="fail-0", bundle=bundle, measure_device=False
    )
    http = UvicornServer(served.app)
    http.server.config.http = ArrivalH11Protocol
    http.start()

    async def run() -> tuple[list[httpx.Response], httpx.Response, str]:
        good = {"model": "tiny", "prompt": "fine", "max_tokens": 12, "temperature": 1.0, "ignore_eos": True}
        bad = {**good, "seed": 666}
        async with httpx.AsyncClient(base_url=http.url, timeout=60) as c:

            async def stream_bad() -> str:
                async with c.stream("POST", "/v1/completions", json={**bad, "stream": True}) as r:
                    return (await r.aread()).decode()

            results = await asyncio.gather(
                *(c.post("/v1/completions", json=good) for _ in range(4)),
                c.post("/v1/completions", json=bad),
                stream_bad(),
            )
        return list(results[:4]), results[4], results[5]

    try:
        oks, failed, streamed = asyncio.run(run())
        assert [r.status_code for r in oks] == [200] * 4
        assert all(r.json()["usage"]["completion_tokens"] == 12 for r in oks)
        assert failed.status_code == 500 and "probability tensor" in failed.json()["error"]["message"]
        assert '"error"' in streamed and "probability tensor" in streamed and "[DONE]" not in streamed
        assert httpx.get(http.url + "/health").status_code == 200
        snap = wait_idle(served)
        assert snap.running == 0 and snap.waiting == 0 and snap.kv_blocks_used == 0
        time.sleep(0.1)  # the streamed request's record is written on the engine's loop
        served.flush()
        reasons = read_bundle(bundle).requests["finish_reason"].value_counts().to_dict()
        assert reasons == {"length": 4, "error": 2}
    finally:
        http.stop()
        served.close()
    assert validate_bundle(bundle).valid


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--max-body-bytes", "0"), ("--max-prompt-chars", "0"), ("--header-timeout", "0"), ("--body-timeout", "-1"),
     ("--keep-alive-timeout", "0"), ("--max-connections", "0"), ("--backlog", "0"), ("--max-header-bytes", "0")],
)  # fmt: skip
def test_serve_refuses_bad_limits_naming_the_flag(flag, value):
    from typer.testing import CliRunner

    from bottleneck_map.cli import app

    r = CliRunner().invoke(app, ["serve", "--port", "0", flag, value])
    assert r.exit_code == 2 and flag in r.output, r.output


def test_oversize_headers_and_idle_kept_alive_connections_are_closed(tiny):
    limits = dataclasses.replace(SMALL, max_header_bytes=4096, keep_alive_timeout_s=0.3)
    served = build_server(
        model="tiny", loaded=tiny, engine_config=CONFIG, instance="hdr-0", measure_device=False, limits=limits
    )
    http = UvicornServer(served.app)
    http.server.config.http = ArrivalH11Protocol.with_limits(limits)
    http.server.config.h11_max_incomplete_event_size = limits.max_header_bytes  # as `serve` sets it
    http.server.config.timeout_keep_alive = limits.keep_alive_timeout_s
    http.start()
    try:
        big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 8192 + b"\r\n\r\n"
        status, doc = _error_of(_raw(http.url, big))  # in one piece
        assert status == 431 and "4096 bytes" in doc["error"]["message"]
        host, port = http.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:  # in pieces
            for i in range(0, len(big), 1000):
                s.sendall(big[i : i + 1000])
                if i >= 5000:
                    break
            assert s.recv(65536).startswith(b"HTTP/1.1 431")
        # a body in the same piece as the headers is not counted with them
        body = json.dumps({"model": "tiny", "prompt": "x" * 8000, "max_tokens": 1}).encode()
        assert _error_of(_raw(http.url, _head(len(body)) + body))[0] == 400  # too long a prompt, not 431
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            t0 = time.monotonic()
            data = b""
            while chunk := s.recv(65536):  # the answer, then the close of the idle connection
                data += chunk
            assert data.startswith(b"HTTP/1.1 200") and time.monotonic() - t0 < 4
    finally:
        http.stop()
        served.close()


def test_an_error_quoting_a_lone_surrogate_is_still_valid_json(guarded):
    http, _ = guarded
    body = b'{"model": "\\ud800", "prompt": "x"}'
    r = httpx.post(http.url + "/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    assert "\ud800" in r.json()["error"]["message"]
