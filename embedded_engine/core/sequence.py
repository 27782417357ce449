"""A request inside the engine: its tokens, its KV blocks and its lifecycle stamps."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    SWAPPED = auto()
    FINISHED_STOPPED = auto()
    FINISHED_LENGTH = auto()
    FINISHED_ABORTED = auto()
    FINISHED_REJECTED = auto()
    FINISHED_ERROR = auto()  # this request's own sampling or processing failed; the others go on

    @property
    def finished(self) -> bool:
        return self.name.startswith("FINISHED")


FINISH_REASONS = {
    SequenceStatus.FINISHED_STOPPED: "stop",
    SequenceStatus.FINISHED_LENGTH: "length",
    SequenceStatus.FINISHED_ABORTED: "abort",
    SequenceStatus.FINISHED_REJECTED: "rejected",
    SequenceStatus.FINISHED_ERROR: "error",
}

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
# Ranges the sampler computes in float32 without overflow (vLLM's for the penalties and min_p).
PENALTY_RANGE = (-2.0, 2.0)
REPETITION_PENALTY_RANGE = (0.01, 100.0)
# Below this a positive temperature is raised to it (vLLM's _MAX_TEMP): dividing float32
# logits by less overflows to inf and the softmax to NaN.
MIN_TEMPERATURE = 1e-2
MAX_LOGPROBS = 20  # most alternatives per token a request may ask for (vLLM's default max_logprobs)


@dataclass(frozen=True)
class SamplingParams:
    """vLLM's names: temperature 0 is greedy; top_k 0 or -1 disables top-k; min_p 0, the
    presence and frequency penalties 0 and repetition_penalty 1 are off."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # with each token: its log-probability and this many most likely alternatives
    # with each prompt token after the first: the same, under the prompt before it (no prefix-cache
    # reads for such a request: a cached token has no logits)
    prompt_logprobs: int | None = None

    def __post_init__(self) -> None:
        floats = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
        for name in floats:
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise ValueError(f"top_k must be -1, 0 or positive, got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not PENALTY_RANGE[0] <= getattr(self, name) <= PENALTY_RANGE[1]:
                raise ValueError(f"{name} must be in {list(PENALTY_RANGE)}, got {getattr(self, name)}")
        if not REPETITION_PENALTY_RANGE[0] <= self.repetition_penalty <= REPETITION_PENALTY_RANGE[1]:
            raise ValueError(
                f"repetition_penalty must be in {list(REPETITION_PENALTY_RANGE)}, got {self.repetition_penalty}"
            )
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(self, name)
            if k is not None and not 0 <= k <= MAX_LOGPROBS:
                raise ValueError(f"{name} must be in [0, {MAX_LOGPROBS}], got {k}")
        if self.seed is not None and not INT64_MIN <= self.seed <= INT64_MAX:
            raise ValueError(f"seed must fit in a signed 64-bit integer, got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalized(self) -> bool:
        """Any penalty changes the logits (applied before greedy and random sampling alike)."""
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1


@dataclass
class RequestTrace:
    """Lifecycle stamps of one request (int64 ns on the bundle clock; None when not reached)."""

    arrival_ns: int
    workload_class: str | None = None
    tokenize_start_ns: int | None = None
    tokenize_end_ns: int | None = None
    queued_ns: int | None = None
    first_scheduled_ns: int | None = None
    first_token_ns: int | None = None
    finished_ns: int | None = None
    first_byte_ns: int | None = None
    last_byte_ns: int | None = None
    scheduled_ns: list[int] = field(default_factory=list)
    preempted_ns: list[int] = field(default_factory=list)
    resumed_ns: list[int] = field(default_factory=list)
    token_ns: list[int] = field(default_factory=list)
    delivered_ns: list[int] = field(default_factory=list)
    prefill_end_ns: int | None = None  # last prompt chunk computed (equals first_token_ns unless preempted)
    recomputed_tokens: int = 0
    swapped_bytes: int = 0
    error: str | None = None
    prompt_text: str | None = None
    output_text: str | None = None
    parent_context: Any = None  # OpenTelemetry context of a caller (W3C traceparent), if any
    trace_id: str | None = None


class Sequence:
    """One request: prompt + generated tokens, the KV blocks holding them, and its trace."""

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        trace: RequestTrace,
        arrival_order: int,
    ) -> None:
        self.request_id = request_id
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.trace = trace
        self.arrival_order = arrival_order
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []  # chained hashes of the full blocks registered so far
        self.swap_table: list[int] = []  # host swap blocks while SWAPPED
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache (first admission)
        self.pending_recompute = 0  # computed tokens dropped by the last recompute preemption
        self.generator: Any = None  # per-request torch.Generator when params.seed is set
        # params.prompt_logprobs: entry i for prompt token i + 1 (sampler.TokenLogprobs)
        self.prompt_logprobs: list[Any] = []

    def __repr__(self) -> str:
        return (
            f"Sequence({self.request_id!r}, {self.status.name}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, blocks={len(self.block_table)})"
        )

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return self.num_tokens - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def in_prefill(self) -> bool:
        """This step computes (a chunk of) a prompt, or re-computes one after preemption,
        rather than decoding the one newest sampled token."""
        return self.num_uncomputed_tokens > 1 or self.num_output_tokens == 0

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    @property
    def finish_reason(self) -> str | None:
        return FINISH_REASONS.get(self.status)
