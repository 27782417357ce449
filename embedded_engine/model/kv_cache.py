"""The paged KV cache: fixed-size blocks preallocated per layer, addressed through block tables."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bottleneck_map.embedded_engine.model.model_config import ModelConfig


@dataclass
class KVCache:
    k: list[torch.Tensor]  # per layer [num_blocks, block_size, num_kv_heads, head_dim]
    v: list[torch.Tensor]
    block_size: int

    @property
    def num_blocks(self) -> int:
        return self.k[0].shape[0]

    @property
    def bytes_per_block(self) -> int:
        per_layer = self.k[0][0].numel() * self.k[0].element_size()
        return 2 * len(self.k) * per_layer


def block_bytes(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one block holds across all layers, keys and values."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * cfg.num_hidden_layers * block_size * cfg.num_key_value_heads * cfg.head_dim * elem


def allocate_kv_cache(
    cfg: ModelConfig, num_blocks: int, block_size: int, device: torch.device | str, dtype: torch.dtype
) -> KVCache:
    if num_blocks <= 0 or block_size <= 0:
        raise ValueError(f"num_blocks and block_size must be positive, got {num_blocks} and {block_size}")
    shape = (num_blocks, block_size, cfg.num_key_value_heads, cfg.head_dim)
    layers = range(cfg.num_hidden_layers)
    return KVCache(
        k=[torch.zeros(shape, dtype=dtype, device=device) for _ in layers],
        v=[torch.zeros(shape, dtype=dtype, device=device) for _ in layers],
        block_size=block_size,
    )


def num_blocks_for_budget(cfg: ModelConfig, budget_bytes: int, block_size: int, dtype: torch.dtype) -> int:
    """How many whole blocks fit in ``budget_bytes``."""
    return int(budget_bytes) // block_bytes(cfg, block_size, dtype)
