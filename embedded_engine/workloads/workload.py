"""Workloads: arrival processes, length distributions, shared prefixes, request classes, JSONL replay.

Arrivals follow ``vllm bench serve``: Poisson at ``request_rate`` (``inf`` = all at
once), or gamma-distributed gaps with shape ``burstiness`` and the same mean rate
(burstiness < 1 is burstier than Poisson, > 1 more regular), or constant gaps.
Prompts are real text built from whole-word tokens of the model's vocabulary, so
the tokenizer does real work and a prompt of N target tokens encodes to about N.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

ARRIVALS = ("poisson", "gamma", "constant", "burst")
LENGTH_KINDS = ("fixed", "uniform", "normal", "lognormal")
_FALLBACK_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "this",
    "be",
    "are",
    "it",
    "an",
    "or",
    "was",
    "which",
    "can",
    "not",
    "all",
    "each",
    "model",
    "system",
    "request",
    "token",
    "cache",
    "memory",
    "latency",
    "batch",
    "queue",
    "prefill",
    "decode",
    "stream",
    "server",
    "user",
    "answer",
    "question",
    "document",
    "context",
    "search",
    "result",
    "agent",
    "tool",
    "call",
    "plan",
    "step",
    "value",
    "time",
    "data",
    "first",
    "last",
    "next",
]


@dataclass(frozen=True)
class LengthDist:
    """Token lengths: ``fixed`` (a), ``uniform`` [a, b], ``normal`` (mean a, std b),
    ``lognormal`` (median a, sigma b). Samples are rounded and clipped to [lo, hi]."""

    kind: str
    a: float
    b: float = 0.0
    lo: int = 1
    hi: int = 1 << 20

    def __post_init__(self) -> None:
        if self.kind not in LENGTH_KINDS:
            raise ValueError(f"length distribution must be one of {', '.join(LENGTH_KINDS)}, got {self.kind!r}")
        if not (math.isfinite(self.a) and self.a >= 1):
            raise ValueError(f"{self.kind} length needs a first parameter >= 1, got {self.a}")
        if self.kind == "uniform" and self.b < self.a:
            raise ValueError(f"uniform length needs max >= min, got {self.a}:{self.b}")
        if self.kind in ("normal", "lognormal") and not (math.isfinite(self.b) and self.b >= 0):
            raise ValueError(f"{self.kind} length needs a spread >= 0, got {self.b}")

    @classmethod
    def parse(cls, text: str) -> LengthDist:
        """``128``, ``uniform:32:512``, ``normal:256:64``, ``lognormal:128:0.6``."""
        parts = text.strip().split(":")
        if len(parts) == 2 and parts[0] == "fixed":
            parts = parts[1:]
        kind, numbers = ("fixed", parts) if len(parts) == 1 else (parts[0], parts[1:])
        try:
            values = [float(x) for x in numbers]
        except ValueError:
            values = []
        if len(parts) not in (1, 3) or not values:
            raise ValueError(f"{text!r}: expected N, uniform:MIN:MAX, normal:MEAN:STD or lognormal:MEDIAN:SIGMA")
        try:
            return cls(kind, *values)
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            x = np.full(n, self.a)
        elif self.kind == "uniform":
            x = rng.uniform(self.a, self.b + 1, n)
        elif self.kind == "normal":
            x = rng.normal(self.a, self.b, n)
        else:
            x = rng.lognormal(math.log(self.a), self.b, n)
        return np.clip(np.floor(x), self.lo, self.hi).astype(np.int64)

    def describe(self) -> str:
        return str(int(self.a)) if self.kind == "fixed" else f"{self.kind}:{self.a:g}:{self.b:g}"


@dataclass(frozen=True)
class ClassProfile:
    """A request class with its own length profile; ``shared_prefix`` tokens are common to
    every prompt of one of its ``prefix_groups`` groups (a system prompt, a tool list)."""

    name: str
    weight: float
    prompt_len: LengthDist
    output_len: LengthDist
    shared_prefix: int = 0
    prefix_groups: int = 1


def default_mix() -> tuple[ClassProfile, ...]:
    """The mixed default: short chats, long-context RAG, agentic calls sharing a system prompt."""
    return (
        ClassProfile("chat", 0.5, LengthDist("lognormal", 40, 0.5, 8, 192), LengthDist("lognormal", 32, 0.5, 8, 128)),
        ClassProfile("rag", 0.25, LengthDist("uniform", 160, 320), LengthDist("uniform", 8, 32)),
        ClassProfile(
            "agentic",
            0.25,
            LengthDist("normal", 32, 12, 8, 96),
            LengthDist("uniform", 16, 48),
            shared_prefix=128,
            prefix_groups=2,
        ),
    )


@dataclass
class WorkloadRequest:
    request_id: str
    arrival_s: float
    workload_class: str
    max_tokens: int
    prompt_text: str | None = None
    prompt_tokens: int | None = None  # target length when built from a token count
    prefix_group: str | None = None


@dataclass
class WorkloadSpec:
    num_requests: int = 64
    request_rate: float = 5.0  # requests/s; inf = all at once
    burstiness: float = 1.0
    arrival: str = "poisson"
    classes: tuple[ClassProfile, ...] = field(default_factory=default_mix)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_requests < 1:
            raise ValueError(f"num_requests must be >= 1, got {self.num_requests}")
        if not self.request_rate > 0:
            raise ValueError(f"request_rate must be > 0 (inf for all at once), got {self.request_rate}")
        if not (math.isfinite(self.burstiness) and self.burstiness > 0):
            raise ValueError(f"burstiness must be > 0, got {self.burstiness}")
        if self.arrival not in ARRIVALS:
            raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}, got {self.arrival!r}")
        if not self.classes or sum(c.weight for c in self.classes) <= 0:
            raise ValueError("a workload needs at least one class with positive weight")

    def with_lengths(
        self, prompt_len: LengthDist | None, output_len: LengthDist | None, shared_prefix: int | None
    ) -> WorkloadSpec:
        """Override every class's prompt/output lengths and shared prefix (CLI flags)."""
        classes = tuple(
            replace(
                c,
                prompt_len=prompt_len or c.prompt_len,
                output_len=output_len or c.output_len,
                shared_prefix=c.shared_prefix if shared_prefix is None else shared_prefix,
            )
            for c in self.classes
        )
        return replace(self, classes=classes)

    @property
    def effective_arrival(self) -> str:
        """A burstiness other than 1 turns Poisson into gamma (as ``vllm bench serve`` does)."""
        if math.isinf(self.request_rate):
            return "burst"
        return "gamma" if self.arrival == "poisson" and self.burstiness != 1.0 else self.arrival

    def to_meta(self) -> dict:
        return {
            "kind": "synthetic",
            "num_requests": self.num_requests,
            "request_rate": None if math.isinf(self.request_rate) else self.request_rate,
            "arrival": self.effective_arrival,
            "burstiness": self.burstiness,
            "seed": self.seed,
            "classes": [
                {
                    **{k: v for k, v in asdict(c).items() if k not in ("prompt_len", "output_len")},
                    "prompt_len": c.prompt_len.describe(),
                    "output_len": c.output_len.describe(),
                }
                for c in self.classes
            ],
        }


def arrival_times(kind: str, n: int, rate: float, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival offsets in seconds from the start, non-decreasing, first at 0 for Poisson/gamma too."""
    if kind == "burst" or math.isinf(rate):
        return np.zeros(n)
    if kind == "constant":
        return np.arange(n) / rate
    shape = 1.0 if kind == "poisson" else burstiness
    gaps = rng.gamma(shape, 1.0 / (rate * shape), n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def word_pool(tokenizer) -> list[str]:
    """Vocabulary tokens that decode to one space-led word: each becomes one token again."""
    words = []
    for i in range(tokenizer.vocab_size):
        text = tokenizer.decode([i])
        if re.fullmatch(r" [a-z]{2,12}", text):
            words.append(text)
    return words or [" " + w for w in _FALLBACK_WORDS]


def make_text(n_tokens: int, rng: np.random.Generator, words: list[str]) -> str:
    idx = rng.integers(0, len(words), int(n_tokens))
    return "".join(words[i] for i in idx).lstrip()


def build_workload(spec: WorkloadSpec, words: list[str]) -> list[WorkloadRequest]:
    rng = np.random.default_rng(spec.seed)
    n = spec.num_requests
    times = arrival_times(spec.effective_arrival, n, spec.request_rate, spec.burstiness, rng)
    weights = np.array([c.weight for c in spec.classes], dtype=float)
    which = rng.choice(len(spec.classes), size=n, p=weights / weights.sum())
    prefixes = {
        (c.name, g): make_text(c.shared_prefix, rng, words) + "\n"
        for c in spec.classes
        if c.shared_prefix
        for g in range(c.prefix_groups)
    }
    out = []
    for i in range(n):
        c = spec.classes[which[i]]
        plen = int(c.prompt_len.sample(rng, 1)[0])
        olen = int(c.output_len.sample(rng, 1)[0])
        group = None
        text = make_text(plen, rng, words)
        if c.shared_prefix:
            g = int(rng.integers(0, c.prefix_groups))
            group = f"{c.name}-{g}"
            text = prefixes[(c.name, g)] + text
        out.append(WorkloadRequest(f"req-{i:05d}", float(times[i]), c.name, olen, text, plen + c.shared_prefix, group))
    return out


def load_jsonl(path: str | Path, words: list[str] | None = None, seed: int = 0) -> list[WorkloadRequest]:
    """Replay: one JSON object per line with ``arrival_s`` (or ``timestamp``), ``prompt`` (text) or
    ``prompt_tokens`` (a count), ``max_tokens``, and optional ``class`` and ``request_id``."""
    rng = np.random.default_rng(seed)
    out = []
    seen: dict[str, int] = {}
    lines = Path(path).read_text().splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object")
        arrival = rec.get("arrival_s", rec.get("timestamp"))
        if not isinstance(arrival, (int, float)) or arrival < 0:
            raise ValueError(f"{where}: arrival_s must be a number >= 0")
        max_tokens = rec.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"{where}: max_tokens must be an integer >= 1")
        text, count = rec.get("prompt"), rec.get("prompt_tokens")
        if isinstance(text, str):
            pass
        elif isinstance(count, int) and count >= 1:
            text = make_text(count, rng, words or [" " + w for w in _FALLBACK_WORDS])
        else:
            raise ValueError(f"{where}: needs prompt (text) or prompt_tokens (integer >= 1)")
        rid = str(rec.get("request_id", f"req-{len(out):05d}"))
        if rid in seen:
            raise ValueError(f"{where}: request_id {rid!r} repeats line {seen[rid]}")
        seen[rid] = lineno
        out.append(WorkloadRequest(rid, float(arrival), str(rec.get("class", "replay")), max_tokens, text, count))
    if not out:
        raise ValueError(f"{path}: no requests")
    t0 = min(r.arrival_s for r in out)
    for r in out:
        r.arrival_s -= t0
    out.sort(key=lambda r: r.arrival_s)
    return out


def describe_replay(path: str | Path, requests: list[WorkloadRequest]) -> dict:
    classes = sorted({r.workload_class for r in requests})
    return {"kind": "replay", "file": str(path), "num_requests": len(requests), "classes": classes}
