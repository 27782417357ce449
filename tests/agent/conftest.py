"""Shared fixtures for the agent tests: the pynvml test double, installed as ``pynvml``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from agent_helpers import make_self_signed  # noqa: E402
from fake_pynvml import FakeGpu, FakeNvml, h100s  # noqa: E402


class FakeClock:
    """A monotonic clock the test moves by hand (seconds, as time.monotonic)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def ns(self) -> int:
        return int(self.t * 1e9)

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def install_nvml(monkeypatch: pytest.MonkeyPatch):
    """Factory: build a FakeNvml and make ``import pynvml`` return it for this test."""

    def make(gpus: list[FakeGpu] | int | None = None, **kwargs) -> FakeNvml:
        if isinstance(gpus, int):
            gpus = h100s(gpus)
        fake = FakeNvml(gpus, **kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", fake.module)
        return fake

    return make


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    return make_self_signed(tmp_path)
