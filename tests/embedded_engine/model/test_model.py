from __future__ import annotations

import pytest
import torch

from bottleneck_map.embedded_engine.model.attention import AttentionMetadata
from bottleneck_map.embedded_engine.model.kv_cache import allocate_kv_cache
from bottleneck_map.embedded_engine.model.loader import load_model
from bottleneck_map.embedded_engine.model.model import rope_inv_freq

BS = 4


def _prefill_then_decode(loaded, prompts, batch_decodes: bool):
    """Prefill each prompt into its own blocks, then one decode step per prompt; returns decode logits."""
    kv = allocate_kv_cache(loaded.config, 64, BS, "cpu", loaded.dtype)
    tables = []
    for i, p in enumerate(prompts):
        blocks = list(range(1 + 8 * i, 9 + 8 * i))
        tables.append(blocks)
        n = len(p)
        slots = torch.tensor([blocks[j // BS] * BS + j % BS for j in range(n)])
        meta = AttentionMetadata(slots, [n], [n], torch.tensor([blocks], dtype=torch.int32), BS)
        loaded.model(torch.tensor(p), torch.arange(n), meta, kv)
    items = [(len(p), blocks) for p, blocks in zip(prompts, tables, strict=True)]
    groups = [items] if batch_decodes else [[it] for it in items]
    out = []
    for group in groups:
        meta = AttentionMetadata(
            slot_mapping=torch.tensor([b[n // BS] * BS + n % BS for n, b in group]),
            query_lens=[1] * len(group),
            context_lens=[n + 1 for n, _ in group],
            block_tables=torch.tensor([b for _, b in group], dtype=torch.int32),
            block_size=BS,
        )
        out.append(loaded.model(torch.full((len(group),), 42), torch.tensor([n for n, _ in group]), meta, kv))
    return torch.cat(out)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny", device="cpu", dtype="float32")


def test_batched_decode_equals_one_at_a_time(tiny):
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16], [17] * 14]
    batched = _prefill_then_decode(tiny, prompts, batch_decodes=True)
    alone = _prefill_then_decode(tiny, prompts, batch_decodes=False)
    assert batched.shape == (3, tiny.config.vocab_size) and batched.dtype == torch.float32
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_tracks_float32(tiny, dtype):
    half = load_model("tiny", device="cpu", dtype=dtype)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    ref = _prefill_then_decode(tiny, prompts, batch_decodes=True)
    low = _prefill_then_decode(half, prompts, batch_decodes=True)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()


def test_rope_scaling_variants(tiny):
    from dataclasses import replace

    cfg = tiny.config
    base = rope_inv_freq(cfg)
    linear = rope_inv_freq(replace(cfg, rope_scaling={"rope_type": "linear", "factor": 4.0}))
    torch.testing.assert_close(linear, base / 4)
    llama3 = rope_inv_freq(
        replace(
            cfg,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        )
    )
    assert llama3[0] == base[0]  # high frequencies are kept
    torch.testing.assert_close(llama3[-1], base[-1] / 8)  # low frequencies are divided by the factor
