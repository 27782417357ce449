"""Fault injection, to check that a diagnosis finds a constraint we planted on purpose.

Every fault costs real resources where the real problem would: tokenizer and host
faults burn CPU on the thread that would do that work (a busy loop, so a CPU sampler
sees it), a slow client sleeps in the streaming consumer before it accepts a chunk.
Settings are recorded in ``meta["injected"]``; the analyzer never reads them.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class Injection:
    tokenize_us_per_token: float = 0.0  # extra CPU per prompt token, on the tokenizing thread
    step_host_ms: float = 0.0  # extra host work per engine step, on the engine thread
    client_read_ms: float = 0.0  # a slow client: delay before each streamed chunk is read

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{f.name} must be a finite number >= 0, got {value}")

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def to_meta(self) -> dict[str, float]:
        """Only the faults that are switched on ({} when none)."""
        return {k: v for k, v in asdict(self).items() if v}


NAMES = tuple(f.name for f in fields(Injection))


def parse_injections(items: list[str] | tuple[str, ...]) -> Injection:
    """``["step_host_ms=2", ...]`` -> Injection; ValueError names the bad item."""
    values: dict[str, float] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in NAMES:
            raise ValueError(f"{item!r}: expected NAME=VALUE with NAME one of {', '.join(NAMES)}")
        try:
            values[name] = float(raw)
        except ValueError:
            raise ValueError(f"{item!r}: {raw!r} is not a number") from None
    return Injection(**values)


def spin(ns: int) -> None:
    """Busy-wait for ``ns`` nanoseconds of wall time on this thread (burns CPU, unlike sleep)."""
    if ns <= 0:
        return
    end = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < end:
        pass
