"""For the whole session: the CPU decode kernel is built (or loaded from torch's extensions
directory) once before any test runs, so that on a fresh machine its first build, about 30 s, is
not paid inside a test that starts a server against a timeout."""

from __future__ import annotations


def pytest_sessionstart(session) -> None:
    from bottleneck_map.embedded_engine.model import cpu_attention

    cpu_attention.decode_kernel()
