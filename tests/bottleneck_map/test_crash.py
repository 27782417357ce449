"""A producer killed with SIGKILL leaves a readable bundle missing at most the last flush interval."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from bottleneck_map.bundle import read_bundle, segment_paths
from bottleneck_map.validate import validate_bundle

FLUSH_S = 0.2
ROW_EVERY_S = 0.002

WRITER = textwrap.dedent(
    f"""
    import sys, time
    from bottleneck_map.bundle import BundleWriter, new_meta
    w = BundleWriter(sys.argv[1], new_meta("crash-test"), flush_interval_s={FLUSH_S}, flush_rows=10**9)
    i = 0
    while True:
        now = time.monotonic_ns()
        w.add_step({{"step_id": i, "start_ns": now, "end_ns": now + 1000, "request_ids": []}})
        i += 1
        time.sleep({ROW_EVERY_S})
    """
)


def test_sigkill_mid_write_leaves_a_readable_bundle(tmp_path):
    path = tmp_path / "crashed"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
    try:
        deadline = time.monotonic() + 30
        while len(segment_paths(path, "steps")) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(segment_paths(path, "steps")) >= 4, "writer produced no segments"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = time.monotonic_ns()

    bundle = read_bundle(path)
    steps = bundle.table("steps")
    assert not bundle.closed
    ids = steps.column("step_id").to_pylist()
    assert ids == list(range(len(ids))), "rows were lost or reordered before the last flush"
    last_row_ns = max(steps.column("start_ns").to_pylist())
    # everything older than one flush interval (plus slack for a loaded machine) survived
    assert (killed_at - last_row_ns) / 1e9 < FLUSH_S + 1.0
    assert not [p for p in (path / "steps").iterdir() if p.name.endswith(".tmp") and not p.name.startswith(".")]
    assert validate_bundle(path).valid
