"""Engine configuration: a dataclass that validates itself, with vLLM's option names."""

from __future__ import annotations

from dataclasses import asdict, dataclass

GIB = 1 << 30
DEFAULT_KV_BYTES = 256 << 20  # KV cache cap when neither num_kv_blocks nor a budget is given
PREEMPTION_MODES = ("recompute", "swap")
DTYPES = ("auto", "float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """An invalid engine setting; ``field`` names the setting (the CLI maps it to its flag)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass
class EngineConfig:
    """Scheduling and KV-cache settings (model-independent).

    ``num_kv_blocks`` wins over ``kv_cache_memory_bytes``; with neither, the engine
    sizes the cache for ``max_num_seqs`` sequences of ``max_model_len`` tokens, capped
    at 256 MiB. ``max_num_batched_tokens`` defaults to 512 with chunked prefill and to
    ``max(512, max_model_len)`` without it (a whole prompt must fit in one step).
    """

    block_size: int = 16
    num_kv_blocks: int | None = None
    kv_cache_memory_bytes: int | None = None
    max_num_seqs: int = 64
    max_num_batched_tokens: int | None = None
    chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    preemption_mode: str = "recompute"
    swap_space_gib: float = 4.0
    max_model_len: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def positive(name: str, value: int | None) -> None:
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(name, f"must be a positive integer, got {value!r}")

        for name in ("block_size", "num_kv_blocks", "kv_cache_memory_bytes", "max_num_seqs"):
            positive(name, getattr(self, name))
        positive("max_num_batched_tokens", self.max_num_batched_tokens)
        positive("max_model_len", self.max_model_len)
        if self.block_size & (self.block_size - 1):
            raise ConfigError("block_size", f"must be a power of two, got {self.block_size}")
        if self.preemption_mode not in PREEMPTION_MODES:
            raise ConfigError("preemption_mode", f"must be one of {', '.join(PREEMPTION_MODES)}")
        if self.swap_space_gib < 0:
            raise ConfigError("swap_space_gib", f"must be >= 0, got {self.swap_space_gib}")
        if self.preemption_mode == "swap" and self.swap_space_gib == 0:
            raise ConfigError("swap_space_gib", "must be > 0 with preemption_mode swap")
        if self.dtype not in DTYPES:
            raise ConfigError("dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError("device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < self.max_num_seqs:
            raise ConfigError(
                "max_num_batched_tokens",
                f"({self.max_num_batched_tokens}) must be >= max_num_seqs ({self.max_num_seqs})",
            )
        if (
            not self.chunked_prefill
            and self.max_num_batched_tokens is not None
            and self.max_model_len is not None
            and self.max_num_batched_tokens < self.max_model_len
        ):
            raise ConfigError(
                "max_num_batched_tokens",
                f"({self.max_num_batched_tokens}) is smaller than max_model_len ({self.max_model_len}); "
                "without chunked prefill a whole prompt must fit in one step",
            )

    def resolved(self, model_max_len: int, bytes_per_block: int) -> EngineConfig:
        """A copy with every derived default filled in, checked against the model and cache."""
        max_model_len = self.max_model_len or model_max_len
        if max_model_len > model_max_len:
            raise ConfigError("max_model_len", f"{max_model_len} exceeds the model's {model_max_len} positions")
        num_blocks = self.num_kv_blocks
        if num_blocks is None:
            if self.kv_cache_memory_bytes is not None:
                num_blocks = self.kv_cache_memory_bytes // bytes_per_block
            else:
                want = self.max_num_seqs * -(-max_model_len // self.block_size)
                num_blocks = min(want, DEFAULT_KV_BYTES // bytes_per_block)
        if num_blocks < 1:
            raise ConfigError("kv_cache_memory_bytes", "too small for a single KV block")
        if self.max_model_len is None:
            max_model_len = min(max_model_len, num_blocks * self.block_size)
        elif max_model_len > num_blocks * self.block_size:
            raise ConfigError(
                "num_kv_blocks",
                f"{num_blocks} blocks of {self.block_size} tokens cannot hold one sequence of "
                f"max_model_len {max_model_len}",
            )
        budget = self.max_num_batched_tokens
        if budget is None:
            budget = max(512, self.max_num_seqs) if self.chunked_prefill else max(512, self.max_num_seqs, max_model_len)
        out = EngineConfig(**{**asdict(self), "num_kv_blocks": num_blocks, "max_model_len": max_model_len})
        out.max_num_batched_tokens = budget
        out.validate()
        return out

    def to_meta(self) -> dict:
        """The ``meta["engine"]`` section."""
        keys = (
            "block_size",
            "num_kv_blocks",
            "max_num_seqs",
            "max_num_batched_tokens",
            "chunked_prefill",
            "enable_prefix_caching",
            "preemption_mode",
            "swap_space_gib",
            "device",
            "dtype",
            "max_model_len",
            "seed",
        )
        return {k: getattr(self, k) for k in keys}
