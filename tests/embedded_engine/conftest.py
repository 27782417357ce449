"""Shared fixtures: the built-in "tiny" model on CPU, loaded once per test session."""

from __future__ import annotations

import pytest
import torch

from bottleneck_map.embedded_engine.core.engine import LLMEngine
from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
from bottleneck_map.embedded_engine.core.sequence import RequestTrace, SamplingParams, Sequence

# The test machine is shared: one intra-op thread avoids OpenMP spin contention (10x slower when loaded).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny():
    from bottleneck_map.embedded_engine.model.loader import load_model

    return load_model("tiny", device="cpu", dtype="float32", seed=0)


@pytest.fixture
def make_engine(tiny):
    def make(**kw) -> LLMEngine:
        sink = kw.pop("sink", None)
        injection = kw.pop("injection", None)
        kw.setdefault("device", "cpu")
        return LLMEngine(tiny, EngineConfig(**kw), sink=sink, injection=injection)

    return make


def _make_seq(rid: str, n_prompt: int, order: int, max_tokens: int = 16, first_token: int = 10) -> Sequence:
    """A sequence with prompt tokens first_token .. first_token + n_prompt - 1."""
    ids = list(range(first_token, first_token + n_prompt))
    return Sequence(rid, ids, SamplingParams(max_tokens=max_tokens), RequestTrace(arrival_ns=order), order)


def _prompts(n: int, lengths: list[int], seed: int = 0, vocab: int = 8192) -> list[list[int]]:
    """Deterministic random prompts of the given lengths (token ids 3..vocab-1)."""
    import random

    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(lengths[i % len(lengths)])] for i in range(n)]


@pytest.fixture
def make_seq():
    return _make_seq


@pytest.fixture
def make_prompts():
    return _prompts
