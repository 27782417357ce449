"""``bottleneck-map agent``: flags, the bundle it writes, clean stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from agent_helpers import free_port
from typer.testing import CliRunner

from bottleneck_map.bundle import read_bundle
from bottleneck_map.cli import app

HERE = Path(__file__).parent


def agent_cmd(*args: str, fake_gpus: int | None = None) -> list[str]:
    """The real CLI in a child process, optionally with the pynvml test double faking GPUs."""
    if fake_gpus is None:
        return [sys.executable, "-m", "bottleneck_map.cli", "agent", *args]
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); import fake_pynvml as f; "
        f"f.install(f.FakeNvml(f.h100s({fake_gpus}))); from bottleneck_map.cli import main; "
        f"sys.argv = ['bottleneck-map', 'agent', *sys.argv[1:]]; main()"
    )
    return [sys.executable, "-c", code, *args]


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--interval", "0"], "--interval"),
        (["--interval", "-1"], "--interval"),
        (["--gpm-interval", "0.05"], "--gpm-interval"),
        (["--gpm-interval", "nan"], "--gpm-interval"),
        (["--port", "70000"], "--port"),
        (["--metric-names", "statsd"], "--metric-names"),
        (["--duration", "0"], "--duration"),
        (["--watch-pid", "999999999"], "--watch-pid"),
        (["--basic-auth", "nocolon"], "--basic-auth"),
        (["--tls-cert", "cert.pem"], "--tls-key"),
        (["--tls-cert", "nope.pem", "--tls-key", "nope.key"], "--tls-cert"),
        (["--interval", "abc"], "--interval"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(args, flag):
    result = CliRunner().invoke(app, ["agent", *args])
    assert result.exit_code == 2, result.output
    assert flag in result.output


def test_basic_auth_from_the_environment_is_checked_too():
    result = CliRunner().invoke(app, ["agent"], env={"BMAP_AGENT_BASIC_AUTH": "justuser"})
    assert result.exit_code == 2 and "--basic-auth" in result.output


def test_out_that_is_a_file_is_a_usage_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    result = CliRunner().invoke(app, ["agent", "--out", str(f)])
    assert result.exit_code == 2 and "--out" in result.output


def test_agent_writes_a_bundle_that_reads_back(tmp_path):
    out = tmp_path / "agent-bundle"
    r = subprocess.run(
        agent_cmd("--port", "0", "--interval", "0.05", "--duration", "1.2", "--out", str(out),
                  "--watch-pid", str(os.getpid()), fake_gpus=2),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "agent serving http://127.0.0.1:" in r.stderr
    b = read_bundle(out)
    assert b.closed and b.meta["producer"] == "bottleneck-map agent"
    assert b.meta["capabilities"]["samples"] is True
    assert [g["uuid"] for g in b.meta["agent"]["nvml"]["gpus"]] == [
        "GPU-00000000-0000-0000-0000-000000000000",
        "GPU-00000001-0000-0000-0000-000000000000",
    ]
    assert b.meta["agent"]["nvml"]["blocking_queries"] == []  # the double answers at once
    df = b.samples
    host, gpu = df[df["source"] == "host"], df[df["source"] == "gpu"]
    assert len(host) >= 3 and host["proc_cpu_ratio"].notna().all()  # every tick (few when the machine is busy)
    assert host["proc_rss_bytes"].notna().sum() >= 1  # once a second
    cpu = host["cpu_util_ratio"]
    assert cpu.notna().sum() >= 1 and cpu.dropna().between(0, 1).all()  # once a second
    assert cpu.notna().sum() == host["host_mem_used_bytes"].notna().sum()  # read with the other host fields
    assert set(gpu["device"]) == {"0", "1"} and (gpu["power_w"] == 312.5).all()
    assert df["ts_ns"].is_monotonic_increasing


def test_agent_appends_to_an_existing_bundle_and_leaves_its_meta(tmp_path):
    from bottleneck_map.bundle import BundleWriter, new_meta

    out = tmp_path / "run"
    BundleWriter(out, new_meta("engine", workload={"kind": "test"})).close()
    meta_before = (out / "meta.json").read_text()
    r = subprocess.run(
        agent_cmd("--port", "0", "--duration", "0.5", "--out", str(out)), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert (out / "meta.json").read_text() == meta_before
    assert (read_bundle(out).samples["source"] == "host").sum() >= 3


def test_sigterm_stops_cleanly_and_serves_until_then(tmp_path):
    out, port = tmp_path / "b", free_port()
    proc = subprocess.Popen(
        agent_cmd("--port", str(port), "--out", str(out), "--metric-names", "dcgm", fake_gpus=1),
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        body = ""
        while time.monotonic() < deadline and "DCGM_FI_DEV_GPU_UTIL" not in body:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                time.sleep(0.1)
        assert "DCGM_FI_DEV_GPU_UTIL{" in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert read_bundle(out).closed


def test_unloadable_certificate_and_busy_port_are_usage_errors(tmp_path):
    import socket

    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    result = CliRunner().invoke(app, ["agent", "--port", "0", "--tls-cert", str(junk), "--tls-key", str(junk)])
    assert result.exit_code == 2 and "--tls-cert" in result.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = CliRunner().invoke(app, ["agent", "--port", str(busy.getsockname()[1])])
    assert result.exit_code == 2 and "--port" in result.output


def test_out_with_a_corrupt_meta_json_exits_1(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "bundle").mkdir()
    (ro / "bundle" / "meta.json").write_text("{not json")
    result = CliRunner().invoke(app, ["agent", "--port", "0", "--out", str(ro / "bundle"), "--duration", "0.2"])
    assert result.exit_code == 1, result.output
    assert "--out" in result.output
