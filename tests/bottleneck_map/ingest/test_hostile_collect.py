"""`collect` as a real process on loopback, under hostile and careless clients.

After each input the process must be alive, its memory within a stated bound, and, once it is
stopped (SIGTERM, as a service manager stops it), the bundle must validate and hold every request
that was acknowledged with 200.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import psutil
import pytest
from factories import otlp_json, otlp_span

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
