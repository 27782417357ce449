"""A real Prometheus (Debian's package) scraping ``serve`` under load and the node agent (the NVML
test double, both naming schemes): every series vLLM's dashboards read returns data, and
``label_values(model_name)``, which fills their ``$model_name``, lists the served model only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from bottleneck_map.agent.collector import AgentCollector
from bottleneck_map.agent.nvml import NvmlSource
from bottleneck_map.agent.sampler import Sampler
from bottleneck_map.agent.server import MetricsServer
from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
from bottleneck_map.embedded_engine.serving.server import ArrivalH11Protocol
from bottleneck_map.embedded_engine.serving.server_cli import build_server
from bottleneck_map.ingest.http_server import UvicornServer, bind

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
FIXTURE = json.loads((Path(__file__).with_name("vllm_dashboard_metrics.json")).read_text())

pytestmark = [
    pytest.mark.slow,
    pytest.mark.prometheus,
    pytest.mark.skipif(
        not os.access(PROMETHEUS, os.X_OK), reason="needs Debian's prometheus (apt-get install prometheus)"
    ),
]


def _free_port() -> int:
    s = bind("127.0.0.1", 0)
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def fake_gpus(monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "agent"))
    from fake_pynvml import FakeNvml, h100s

    fake = FakeNvml(h100s(2))
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    return fake


def test_dashboard_series_through_a_real_prometheus(tiny, tmp_path, fake_gpus):
    served = build_server(
        model="tiny",
        loaded=tiny,
        engine_config=EngineConfig(device="cpu", max_num_seqs=8, num_kv_blocks=128, max_model_len=256),
        instance="prom-0",
        measure_device=False,
    )
    http = UvicornServer(served.app)
    http.server.config.http = ArrivalH11Protocol
    http.start()
    sampler = Sampler(interval_s=0.5, sources=[NvmlSource(gpm_interval_s=0.1)]).start()
    agents = []
    for scheme in ("prometheus", "dcgm"):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(AgentCollector(sampler, scheme))
        agents.append(MetricsServer(registry, "127.0.0.1", 0).start())
    port = _free_port()
    cfg = tmp_path / "prometheus.yml"
    targets = {
        "vllm": http.url.split("//")[1],
        "agent": f"127.0.0.1:{agents[0].port}",
        "dcgm": f"127.0.0.1:{agents[1].port}",
    }
    jobs = "".join(f"  - job_name: {j}\n    static_configs: [{{targets: ['{t}']}}]\n" for j, t in targets.items())
    cfg.write_text(f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{jobs}")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def api(path: str, **params):
        r = httpx.get(f"{base}/api/v1/{path}?" + urllib.parse.urlencode(params), timeout=5).json()
        assert r["status"] == "success", r
        return r["data"]

    def query(q: str) -> list:
        return api("query", query=q)["result"]

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                up = query("up")
                if len(up) == 3 and all(r["value"][1] == "1" for r in up):
                    break
            except (httpx.HTTPError, ValueError):  # not listening yet, or not ready (a plain-text answer)
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                seen = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in api("targets")["activeTargets"]]
                pytest.fail(f"Prometheus did not scrape all three targets: {seen}")
            time.sleep(0.3)
        body = {"model": "tiny", "max_tokens": 4, "ignore_eos": True}
        chat = {**body, "messages": [{"role": "user", "content": "x"}]}
        with httpx.Client(base_url=http.url, timeout=60) as c:
            for i in range(4):
                assert c.post("/v1/completions", json={**body, "prompt": f"load {i}"}).status_code == 200
                assert c.post("/v1/chat/completions", json=chat).status_code == 200
        time.sleep(2.5)  # two scrapes after the last request
        # Grafana's default for $model_name: the first value of label_values(model_name)
        assert api("label/model_name/values") == ["tiny"]
        missing = []
        for dashboard, names in FIXTURE["dashboards"].items():
            for name in names:
                selector = "" if name.startswith("http_") else '{model_name="tiny"}'
                if not query(f"{name}{selector}"):
                    missing.append((dashboard, name))
        assert not missing
        rate = query('sum(rate(vllm:request_success_total{model_name="tiny"}[1m]))')
        assert float(rate[0]["value"][1]) > 0
        # the agent's GPU series in both schemes, with the GPU model under its own label names
        assert {r["metric"]["gpu_model"] for r in query("bmap_gpu_power_watts")} == {"NVIDIA H100 80GB HBM3"}
        assert {r["metric"]["modelName"] for r in query("DCGM_FI_DEV_POWER_USAGE")} == {"NVIDIA H100 80GB HBM3"}
    finally:
        proc.terminate()
        proc.wait(10)
        for a in agents:
            a.stop()
        sampler.stop()
        http.stop()
        served.close()
