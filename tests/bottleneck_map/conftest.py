from __future__ import annotations

from pathlib import Path

import pytest
from factories import request_row, step_row

from bottleneck_map.bundle import BundleWriter, new_meta


@pytest.fixture
def make_bundle(tmp_path: Path):
    """Write a small valid bundle and return its path."""

    def _make(n_requests: int = 5, n_steps: int = 8, name: str = "bundle", close: bool = True) -> Path:
        path = tmp_path / name
        w = BundleWriter(path, new_meta("test", model={"name": "test"}))
        for i in range(n_requests):
            w.add_request(request_row(i))
        ids = [f"req-{i}" for i in range(n_requests)]
        for s in range(n_steps):
            w.add_step(step_row(s, ids[: 1 + s % max(1, n_requests)]))
        w.add_sample({"ts_ns": 1_000_000_000, "source": "host", "device": "host", "cpu_util_ratio": 0.5})
        if close:
            w.close()
        else:
            w.flush()
        return path

    return _make
