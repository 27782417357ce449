"""A fleet on loopback: a real Prometheus scraping two agents and two `serve` instances; `collect`
receives both servers' spans and pulls Prometheus, and the map is built per instance and fleet-wide."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import httpx
import openai
import pytest

from bottleneck_map.bundle import BundleWriter, read_bundle
from bottleneck_map.ingest.collect import TraceSink, collect_meta, finish, otlp_app
from bottleneck_map.ingest.http_server import UvicornServer, bind
from bottleneck_map.validate import validate_bundle

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.prometheus,
    pytest.mark.skipif(
        not os.access(PROMETHEUS, os.X_OK),
        reason="needs Debian's prometheus (apt-get install prometheus); CI installs it",
    ),
]


@pytest.fixture(scope="module")
def tiny():
    from bottleneck_map.embedded_engine.model.loader import load_model

    return load_model("tiny", device="cpu", dtype="float32", seed=0)


def free_port() -> int:
    s = bind("127.0.0.1", 0)
    port = s.getsockname()[1]
    s.close()
    return port


def wait_targets_up(url: str, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            active = httpx.get(url + "/api/v1/targets", timeout=2).json()["data"]["activeTargets"]
            if sum(t["health"] == "up" for t in active) >= n:
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"Prometheus at {url} did not see {n} targets up")


@pytest.fixture
def prometheus(tmp_path):
    procs = []

    def start(targets: dict[str, list[str]]) -> str:
        port = free_port()
        jobs = "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: [{', '.join(repr(t) for t in ts)}]\n"
            for job, ts in targets.items()
        )
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{jobs}")
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(proc)
        return f"http://127.0.0.1:{port}"

    yield start
    for p in procs:
        p.terminate()
        p.wait(10)


def test_fleet_of_two_servers_and_two_agents(tiny, tmp_path, prometheus, monkeypatch):
    from prometheus_client import CollectorRegistry

    from bottleneck_map.agent.collector import AgentCollector
    from bottleneck_map.agent.sampler import Sampler
    from bottleneck_map.agent.server import MetricsServer
    from bottleneck_map.analyzer.fleet import FLEET, fleet_maps, summary_rows
    from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
    from bottleneck_map.embedded_engine.serving.server_cli import build_server

    writer = BundleWriter(tmp_path / "fleet", collect_meta(), flush_interval_s=0.5)
    sink = TraceSink(writer)
    receiver = UvicornServer(otlp_app(sink)).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{receiver.url}/v1/traces")

    servers, https, agents = [], [], []
    try:
        for _ in range(2):
            http = UvicornServer(None)
            served = build_server(
                model="tiny",
                loaded=tiny,
                engine_config=EngineConfig(device="cpu", max_num_seqs=8, num_kv_blocks=128, max_model_len=256),
                instance=f"127.0.0.1:{http.port}",
                measure_device=False,
            )
            http.server.config.app = served.app
            servers.append(served)
            https.append(http.start())
        for _ in range(2):
            sampler = Sampler(interval_s=0.5).start()
            registry = CollectorRegistry(auto_describe=False)
            registry.register(AgentCollector(sampler))
            agents.append((sampler, MetricsServer(registry, "127.0.0.1", 0).start()))
        serve_targets = [f"127.0.0.1:{h.port}" for h in https]
        agent_targets = [f"127.0.0.1:{m.port}" for _, m in agents]
        prom = prometheus({"serve": serve_targets, "agent": agent_targets})
        started = time.time_ns()
        wait_targets_up(prom, 4)

        counts = {serve_targets[0]: 6, serve_targets[1]: 3}
        for http, target in zip(https, serve_targets, strict=True):
            client = openai.OpenAI(base_url=http.url + "/v1", api_key="unused", max_retries=0)
            for i in range(counts[target]):
                client.completions.create(
                    model="tiny", prompt=f"fleet {i}", max_tokens=4, extra_body={"ignore_eos": True}
                )
        time.sleep(3.5)  # a few scrapes after the last request
    finally:
        for http in https:
            http.stop()
        for served in servers:
            served.close()  # flushes the span exporters
        for sampler, metrics in agents:
            metrics.stop()
            sampler.stop()
        receiver.stop()
    summary = finish(writer, sink, started, prometheus=prom, instances=None, step_s=1.0)

    assert validate_bundle(tmp_path / "fleet").valid
    b = read_bundle(tmp_path / "fleet")
    req, samples = b.requests, b.samples
    assert req.groupby("instance").size().to_dict() == counts
    engine = samples[samples["source"] == "prometheus:vllm"]
    assert set(engine["instance"]) == set(serve_targets)
    gen = engine.groupby("instance")["generation_tokens_total"].max().to_dict()
    assert gen == {t: 4.0 * n for t, n in counts.items()}
    host = samples[samples["source"] == "prometheus:agent"]
    assert set(host["instance"]) == set(agent_targets)
    assert host["cpu_util_ratio"].notna().any()
    assert summary["prometheus_points"]["num_requests_running"] > 0

    maps = fleet_maps(tmp_path / "fleet")
    assert set(maps) == {FLEET, *serve_targets}
    rows = {r["instance"]: r for r in summary_rows(maps)}
    assert rows[FLEET]["requests"] == 9
    assert {t: rows[t]["requests"] for t in serve_targets} == counts
    # No step records from spans, but each engine's step counter (vllm:iteration_tokens_total) is in
    # Prometheus: steps are inferred per instance, so only swap traffic stays out of reach.
    for t in serve_targets:
        assert "prefill_compute" not in rows[t]["unreachable"]
        assert "pcie_transfer" in rows[t]["unreachable"]
    assert any(e.metric == "inferred_steps"
               for v in maps[serve_targets[0]].verdicts for e in v.evidence)  # fmt: skip

    from typer.testing import CliRunner

    from bottleneck_map.cli import app

    out = CliRunner().invoke(app, ["fleet", str(tmp_path / "fleet"), "--json"])
    assert out.exit_code == 0, out.output
    assert {r["instance"] for r in json.loads(out.output)} == {FLEET, *serve_targets}
