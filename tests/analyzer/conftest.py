"""Fixtures for analyzer tests: bundles written by the small simulator in ``analyzer_synth``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from analyzer_synth import Sim, simulate  # noqa: E402


@pytest.fixture
def sim_bundle(tmp_path: Path):
    """``sim_bundle(**Sim fields)`` -> path of a freshly simulated bundle."""
    count = iter(range(1000))

    def _make(with_steps: bool = True, **kw) -> Path:
        return simulate(Sim(**kw), tmp_path / f"b{next(count)}", with_steps=with_steps)

    return _make
