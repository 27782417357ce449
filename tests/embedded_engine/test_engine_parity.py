"""The whole engine (scheduler, paged KV, chunked prefill, prefix cache, sampler) against transformers.

Greedy output tokens must equal ``transformers`` ``generate`` token for token, for several prompts
submitted together, with KV blocks of 4 tokens (smaller than every prompt) and a token budget small
enough that prompts are prefilled in chunks mixed with other requests' decodes.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from bottleneck_map.embedded_engine.engine import LLMEngine
from bottleneck_map.embedded_engine.engine_config import EngineConfig
from bottleneck_map.embedded_engine.loader import PRESETS_DIR, load_model
from bottleneck_map.embedded_engine.sequence import SamplingParams

transformers = pytest.importorskip("transformers")

PROMPT_LENS = (5, 11, 17, 26, 9)
NEW_TOKENS = 10
COMMON = dict(
    vocab_size=8192,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    max_position_embeddings=256,
    bos_token_id=0,
    eos_token_id=2,
)


def _checkpoint(path, config):
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # weights with visible structure, so greedy choices are not near-ties
        for name, p in hf.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if "norm" in name else 0.15 * noise)
    hf.eval()
    hf.save_pretrained(path)
    shutil.copy(PRESETS_DIR / "tokenizer.json", path / "tokenizer.json")
    return hf, load_model(str(path), device="cpu", dtype="float32")


def _hf_greedy(hf, prompt: list[int]) -> list[int]:
    out = hf.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(
            lambda: transformers.LlamaConfig(**COMMON, num_attention_heads=4, num_key_value_heads=2), id="llama-gqa"
        ),
        pytest.param(
            lambda: transformers.Qwen2Config(**COMMON, num_attention_heads=4, num_key_value_heads=2), id="qwen2"
        ),
    ],
)
@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "whole-prefill"])
def test_engine_greedy_matches_transformers(tmp_path, config, chunked):
    hf, ours = _checkpoint(tmp_path, config())
    gen = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, 8192, (n,), generator=gen).tolist() for n in PROMPT_LENS]
    prompts.append(prompts[3][:16] + [40, 41, 42])  # shares 4 full blocks with another prompt
    engine = LLMEngine(
        ours,
        EngineConfig(
            block_size=4,
            num_kv_blocks=96,
            max_num_seqs=4,
            max_num_batched_tokens=8 if chunked else 64,
            chunked_prefill=chunked,
            max_model_len=64,
            device="cpu",
        ),
    )
    got = engine.generate(prompts, SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True))
    expected = [_hf_greedy(hf, p) for p in prompts]
    assert got == expected
    assert engine.stats.num_steps > NEW_TOKENS  # requests really were interleaved over many steps
    assert engine.block_manager.prefix_hit_tokens == 16  # the last prompt reused the cached blocks
