"""Against the real tools from Debian's ``prometheus`` package: promtool lints the
exposition, and a real Prometheus server scrapes the agent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from agent_helpers import free_port
from prometheus_client import CollectorRegistry, generate_latest

from bottleneck_map.agent.collector import AgentCollector
from bottleneck_map.agent.host import HostSource
from bottleneck_map.agent.nvml import NvmlSource
from bottleneck_map.agent.sampler import Sampler
from bottleneck_map.agent.server import BasicAuth, MetricsServer

pytestmark = pytest.mark.prometheus

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
need_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus')")
need_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus server not installed (Debian package 'prometheus')"
)

# dcgm-exporter's own label `modelName` is camelCase; promtool's linter flags it on dcgm-exporter's
# real output too. It is the only finding allowed, and only on the dcgm scheme.
DCGM_ALLOWED_LINT = "label names should be written in 'snake_case' not 'camelCase'"


@pytest.fixture
def busy_sampler(install_nvml):
    install_nvml(2)
    s = Sampler(
        interval_s=1,
        watch_pid=os.getpid(),
        sources=[HostSource(os.getpid()), NvmlSource(watch_pid=os.getpid(), gpm_interval_s=0.1)],
    )
    s.open()
    s.sample_once()
    time.sleep(0.11)
    s.sample_once()
    yield s
    s.stop()


def _exposition(sampler: Sampler, scheme: str) -> bytes:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(AgentCollector(sampler, scheme))
    return generate_latest(reg)


@need_promtool
def test_promtool_passes_on_the_prometheus_scheme(busy_sampler):
    text = _exposition(busy_sampler, "prometheus")
    assert b"bmap_gpu_sm_occupancy_ratio" in text and b"bmap_process_cpu_ratio" in text
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert not r.stdout.strip()


@need_promtool
def test_promtool_parses_the_dcgm_scheme_with_only_dcgms_own_label_lint(busy_sampler):
    text = _exposition(busy_sampler, "dcgm")
    assert b"DCGM_FI_PROF_SM_OCCUPANCY{" in text
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=60)
    out = (r.stdout + r.stderr).decode()
    findings = [line for line in out.splitlines() if line.strip()]
    assert r.returncode in (0, 3), out  # 1 would be a parse error; 3 means lint findings only
    assert all(line.endswith(DCGM_ALLOWED_LINT) and line.startswith("DCGM_FI_") for line in findings), out
    # without the camelCase label, the dcgm exposition is lint-clean
    clean = text.replace(b"modelName=", b"model_name=")
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=clean, capture_output=True, timeout=60)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            value = predicate()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout} s waiting for {what}; prometheus log: {log.read_text()[-2000:]}")


@need_prometheus
def test_a_real_prometheus_scrapes_the_agent(busy_sampler, tmp_path, tls_files):
    plain = CollectorRegistry(auto_describe=False)
    plain.register(AgentCollector(busy_sampler, "prometheus", hostname="node-a"))
    dcgm = CollectorRegistry(auto_describe=False)
    dcgm.register(AgentCollector(busy_sampler, "dcgm", hostname="node-a"))
    cert, key = tls_files
    servers = [
        MetricsServer(plain, port=0).start(),
        MetricsServer(dcgm, port=0, tls_cert=str(cert), tls_key=str(key), basic_auth=BasicAuth("prom", "pw")).start(),
    ]
    web = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: bmap-agent
    static_configs: [{{targets: ["127.0.0.1:{servers[0].port}"]}}]
  - job_name: bmap-agent-dcgm
    scheme: https
    basic_auth: {{username: prom, password: pw}}
    tls_config: {{ca_file: "{cert}"}}
    static_configs: [{{targets: ["127.0.0.1:{servers[1].port}"]}}]
"""
    )
    log = tmp_path / "prometheus.log"
    with log.open("wb") as logf:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{web}",
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{web}"
    try:
        _wait_until(lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200, 30, "ready", proc, log)

        def query(q: str):
            res = _get_json(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": q}))
            assert res["status"] == "success"
            return res["data"]["result"]

        cpu = _wait_until(
            lambda: query('bmap_host_cpu_utilization_ratio{job="bmap-agent"}'), 30, "the agent's CPU series", proc, log
        )
        assert cpu[0]["metric"]["job"] == "bmap-agent" and cpu[0]["metric"]["hostname"] == "node-a"
        assert 0.0 <= float(cpu[0]["value"][1]) <= 1.0
        util = _wait_until(lambda: query("DCGM_FI_DEV_GPU_UTIL"), 30, "the dcgm series over TLS + auth", proc, log)
        assert {r["metric"]["gpu"] for r in util} == {"0", "1"}
        assert {float(r["value"][1]) for r in util} == {87.0}
        assert util[0]["metric"]["job"] == "bmap-agent-dcgm" and util[0]["metric"]["modelName"]
        ups = {r["metric"]["job"]: r["value"][1] for r in query("up")}
        assert ups == {"bmap-agent": "1", "bmap-agent-dcgm": "1"}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        for s in servers:
            s.stop()
