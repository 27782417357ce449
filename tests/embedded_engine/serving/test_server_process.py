"""`serve` with the engine core in its own process: fault injection, aborts, the engine
process dying (503 and a clear log, not a hang), and clean shutdown of the CLI on SIGTERM and
SIGINT with no engine process left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from bottleneck_map.bundle import read_bundle
from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
from bottleneck_map.embedded_engine.core.inject import Injection
from bottleneck_map.embedded_engine.serving.server_cli import build_server
from bottleneck_map.ingest.http_server import UvicornServer


def wait_until(cond, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_injection_abort_and_engine_process_death(tmp_path, caplog):
    served = build_server(
        model="tiny",
        engine_config=EngineConfig(device="cpu", max_num_seqs=4, num_kv_blocks=64, max_model_len=512),
        instance="proc-0",
        bundle=tmp_path / "bundle",
        measure_device=False,
        injection=Injection(step_host_ms=2.0),  # at least 2 ms per step
        threads=1,
    )
    proc = served.state.loop.process
    try:
        with UvicornServer(served.app) as http:
            # a client leaving a non-streaming request aborts it and frees its blocks
            body = {"model": "tiny", "prompt": "a long answer please", "max_tokens": 450, "ignore_eos": True}
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(http.url + "/v1/completions", json=body, timeout=httpx.Timeout(5, read=0.3))
            wait_until(lambda: not served.snapshot().unfinished, what="the abort")
            snap = served.snapshot()
            assert snap.kv_blocks_used == 0 and snap.kv_blocks_free == 64
            served.flush()
            (row,) = read_bundle(tmp_path / "bundle").requests.itertuples()
            assert row.finish_reason == "abort" and row.output_tokens < 450

            # the engine process dies mid-stream: the stream ends with an error, then 503s
            with httpx.stream("POST", http.url + "/v1/completions", json={**body, "stream": True}, timeout=10) as r:
                lines = r.iter_lines()
                assert next(lines).startswith("data: {")
                os.kill(proc.pid, signal.SIGKILL)
                rest = [x for x in lines if x.startswith("data: ")]
            err = json.loads(next(x for x in rest if '"error"' in x)[6:])["error"]
            assert err["code"] == 500 and f"engine process (pid {proc.pid}) exited" in err["message"]
            health = httpx.get(http.url + "/health")
            assert health.status_code == 503 and "exited" in health.json()["error"]
            again = httpx.post(http.url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
            assert again.status_code == 503 and again.json()["error"]["type"] == "ServiceUnavailableError"
            assert httpx.get(http.url + "/metrics").status_code == 200  # still scrapeable
    finally:
        served.close()
    assert any("exited with code" in rec.getMessage() for rec in caplog.records)
    meta = read_bundle(tmp_path / "bundle").meta
    assert meta["injected"] == {"step_host_ms": 2.0} and meta["serve"]["engine_process"] is True


def start_serve(tmp_path, *extra: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "bottleneck_map.cli", "serve", "--model", "tiny", "--device", "cpu",
           "--port", "0", "--threads", "1", "--max-num-seqs", "4", *extra]  # fmt: skip
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    m = re.search(r"on (http://\S+)/v1", line)
    assert m, line + p.stderr.read()
    return p, m.group(1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_stops_cleanly_and_leaves_no_engine_process(tmp_path, sig):
    p, url = start_serve(tmp_path, "--bundle", str(tmp_path / "bundle"))
    try:
        children = psutil.Process(p.pid).children(recursive=True)
        engines = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        assert len(engines) == 1
        r = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 3, "stream": True})
        assert r.status_code == 200 and "[DONE]" in r.text
        p.send_signal(sig)
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
    wait_until(lambda: not engines[0].is_running(), what="the engine process to exit")
    bundle = read_bundle(tmp_path / "bundle")
    assert bundle.closed and len(bundle.requests) == 1
    assert bundle.requests["first_byte_ns"].notna().all()


def test_engine_process_exits_when_the_http_process_is_killed(tmp_path):
    p, _ = start_serve(tmp_path)
    engine = next(c for c in psutil.Process(p.pid).children(recursive=True) if "spawn_main" in " ".join(c.cmdline()))
    p.kill()
    p.wait(10)
    wait_until(lambda: not engine.is_running() or engine.status() == psutil.STATUS_ZOMBIE, what="the engine to exit")
