"""The whole engine (scheduler, paged KV, chunked prefill, prefix cache, sampler) against transformers.

Greedy output tokens must equal ``transformers`` ``generate`` token for token, for several prompts
submitted together, with KV blocks of 4 tokens (smaller than every prompt) and a token budget small
enough that prompts are prefilled in chunks mixed with other requests' decodes.
"""

from __future__ import annotations

import pytest
import torch
from hf_checkpoints import COMMON, hf_checkpoint

from bottleneck_map.embedded_engine.core.engine import LLMEngine
from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
from bottleneck_map.embedded_engine.core.sequence import SamplingParams

transformers = pytest.importorskip("transformers")


PROMPT_LENS = (5, 11, 17, 26, 9)
NEW_TOKENS = 10


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
    hf, ours = hf_checkpoint(tmp_path, config())
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


@pytest.mark.parametrize("num_kv_blocks", [96, 14], ids=["roomy", "preempting"])
def test_prompt_logprobs_match_transformers(tmp_path, num_kv_blocks):
    """Each prompt token after the first, scored under the prompt before it, as transformers'
    log-softmax of the same forward: prompts in chunks of a small token budget, one of them sharing
    cached blocks with an earlier prompt (not read: it asks for prompt log-probabilities), and with
    14 blocks of 4 tokens, sequences preempted and recomputed (their prompts not scored twice)."""
    hf, ours = hf_checkpoint(tmp_path, transformers.LlamaConfig(**COMMON, num_attention_heads=4, num_key_value_heads=2))
    gen = torch.Generator().manual_seed(11)
    prompts = [torch.randint(3, 8192, (n,), generator=gen).tolist() for n in (26, 17, 9)]
    prompts.append(prompts[0][:16] + [40, 41, 42])
    engine = LLMEngine(
        ours,
        EngineConfig(
            block_size=4, num_kv_blocks=num_kv_blocks, max_num_seqs=4, max_num_batched_tokens=8, max_model_len=40,
            device="cpu",
        ),
    )  # fmt: skip
    k = 3
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, SamplingParams(max_tokens=4, ignore_eos=True, prompt_logprobs=k))
    firsts = {}
    for out in engine.run_until_done():
        if out.prompt_logprobs is not None:
            firsts.setdefault(out.request_id, out.prompt_logprobs)
    assert engine.block_manager.prefix_hit_tokens == 0
    if num_kv_blocks == 14:
        assert engine.stats.num_preemptions > 0
    for i, p in enumerate(prompts):
        with torch.no_grad():
            lp = torch.log_softmax(hf(torch.tensor([p])).logits[0].float(), -1)
        got = firsts[str(i)]
        assert len(got) == len(p) - 1
        for j, (own, top) in enumerate(got):
            assert own == pytest.approx(lp[j, p[j + 1]].item(), abs=1e-4)
            want = torch.topk(lp[j], k)
            assert [t for t, _ in top] == want.indices.tolist()
            assert [v for _, v in top] == pytest.approx(want.values.tolist(), abs=1e-4)
