from __future__ import annotations

import pytest
import torch

from bottleneck_map.embedded_engine.model.kv_cache import allocate_kv_cache, block_bytes, num_blocks_for_budget
from bottleneck_map.embedded_engine.model.loader import PRESETS_DIR
from bottleneck_map.embedded_engine.model.model_config import ModelConfig


@pytest.fixture
def cfg():
    import json

    return ModelConfig.from_hf_dict(json.loads((PRESETS_DIR / "tiny" / "config.json").read_text()), "tiny")


def test_layout_one_tensor_pair_per_layer(cfg):
    kv = allocate_kv_cache(cfg, num_blocks=10, block_size=16, device="cpu", dtype=torch.bfloat16)
    assert len(kv.k) == len(kv.v) == cfg.num_hidden_layers
    assert kv.k[0].shape == (10, 16, cfg.num_key_value_heads, cfg.head_dim)
    assert kv.k[0].dtype == torch.bfloat16
    assert kv.num_blocks == 10
    expected = 2 * cfg.num_hidden_layers * 16 * cfg.num_key_value_heads * cfg.head_dim * 2
    assert kv.bytes_per_block == expected == block_bytes(cfg, 16, torch.bfloat16)


def test_layers_do_not_share_storage(cfg):
    kv = allocate_kv_cache(cfg, 2, 4, "cpu", torch.float32)
    kv.k[0].fill_(1.0)
    assert kv.k[1].abs().sum() == 0 and kv.v[0].abs().sum() == 0


def test_budget_counts_whole_blocks(cfg):
    per_block = block_bytes(cfg, 16, torch.float32)
    assert num_blocks_for_budget(cfg, 10 * per_block + per_block - 1, 16, torch.float32) == 10
    assert num_blocks_for_budget(cfg, per_block - 1, 16, torch.float32) == 0
    assert num_blocks_for_budget(cfg, 10 * per_block, 16, torch.float16) == 20


def test_rejects_empty_cache(cfg):
    with pytest.raises(ValueError):
        allocate_kv_cache(cfg, 0, 16, "cpu", torch.float32)
