"""Engine flags shared by ``run`` and ``serve``, named as vLLM names them.

Each option is defined once here and used as the default of both commands' parameters;
:func:`engine_config` turns the values into an :class:`EngineConfig` and reports an invalid
setting as a usage error naming its flag.
"""

from __future__ import annotations

import typer

from bottleneck_map.embedded_engine.core.engine_config import ConfigError, EngineConfig

_FLAG_OF_FIELD = {
    "swap_space_gib": "--swap-space",
    "chunked_prefill": "--no-chunked-prefill",
}

MODEL = typer.Option(
    "default", "--model", help="Built-in preset (default, tiny, small-150m) or a local HF checkpoint directory."
)
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
DTYPE = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16.")
MAX_NUM_SEQS = typer.Option(64, "--max-num-seqs", help="Most sequences in one batch.")
MAX_NUM_BATCHED_TOKENS = typer.Option(
    None,
    "--max-num-batched-tokens",
    help="Token budget of one step (default 512; max-model-len without chunked prefill).",
)
BLOCK_SIZE = typer.Option(16, "--block-size", help="Tokens per KV block.")
NUM_KV_BLOCKS = typer.Option(
    None,
    "--num-kv-blocks",
    help="KV cache size in blocks (default: max-num-seqs full-length sequences, at most 256 MiB).",
)
KV_CACHE_MEMORY_BYTES = typer.Option(
    None, "--kv-cache-memory-bytes", help="KV cache size as a memory budget (ignored with --num-kv-blocks)."
)
MAX_MODEL_LEN = typer.Option(
    None, "--max-model-len", help="Context length limit (default: the model's, capped by the KV cache)."
)
ENABLE_PREFIX_CACHING = typer.Option(
    True, "--enable-prefix-caching/--no-enable-prefix-caching", help="Reuse KV blocks of shared prompt prefixes."
)
PREEMPTION_MODE = typer.Option(
    "recompute", "--preemption-mode", help="recompute (drop KV, recompute later) or swap (copy KV to host memory)."
)
SWAP_SPACE = typer.Option(4.0, "--swap-space", help="Host swap space in GiB (preemption-mode swap).")
NO_CHUNKED_PREFILL = typer.Option(False, "--no-chunked-prefill", help="Separate prefill and decode steps.")
SEED = typer.Option(0, "--seed", help="Seed for weights of built-in models, workload and sampling.")
RECORD_PROMPTS = typer.Option(False, "--record-prompts", help="Store prompt and output text in the bundle.")


def flag_of(field_name: str) -> str:
    """The command-line flag that sets an EngineConfig field."""
    return _FLAG_OF_FIELD.get(field_name, "--" + field_name.replace("_", "-"))


def config_error(exc: ConfigError) -> typer.BadParameter:
    return typer.BadParameter(str(exc), param_hint=flag_of(exc.field))


def engine_config(
    *,
    block_size: int,
    num_kv_blocks: int | None,
    kv_cache_memory_bytes: int | None,
    max_num_seqs: int,
    max_num_batched_tokens: int | None,
    no_chunked_prefill: bool,
    enable_prefix_caching: bool,
    preemption_mode: str,
    swap_space: float,
    max_model_len: int | None,
    device: str,
    dtype: str,
    seed: int,
) -> EngineConfig:
    """The engine settings from flag values; an invalid one is a usage error naming its flag."""
    try:
        return EngineConfig(
            block_size=block_size,
            num_kv_blocks=num_kv_blocks,
            kv_cache_memory_bytes=kv_cache_memory_bytes,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            chunked_prefill=not no_chunked_prefill,
            enable_prefix_caching=enable_prefix_caching,
            preemption_mode=preemption_mode,
            swap_space_gib=swap_space,
            max_model_len=max_model_len,
            device=device,
            dtype=dtype,
            seed=seed,
        )
    except ConfigError as exc:
        raise config_error(exc) from None
