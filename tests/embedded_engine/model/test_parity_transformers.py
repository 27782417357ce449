"""Our paged engine against Hugging Face transformers on the same random checkpoints.

A small driver below plays the scheduler: it allocates blocks of 4 tokens (smaller than every
prompt), starts one prompt per step while earlier ones decode, and feeds prompts in chunks, so one
forward mixes decodes and prefill chunks and every read goes through the block tables.

Tolerance: float32 logits agree within ``ATOL`` (absolute) at every generated position; greedy
tokens agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from hf_checkpoints import COMMON, hf_checkpoint

from bottleneck_map.embedded_engine.model.attention import AttentionMetadata
from bottleneck_map.embedded_engine.model.kv_cache import allocate_kv_cache

transformers = pytest.importorskip("transformers")


ATOL = 1e-4
BLOCK = 4
PROMPT_LENS = (5, 11, 17, 26)
NEW_TOKENS = 8


@dataclass
class Seq:
    tokens: list[int]
    blocks: list[int] = field(default_factory=list)
    computed: int = 0
    logits: list[torch.Tensor] = field(default_factory=list)


class PagedDriver:
    """Minimal scheduler: bump allocation of blocks, explicit chunks per step."""

    def __init__(self, loaded, num_blocks: int = 256) -> None:
        self.model = loaded.model
        self.kv = allocate_kv_cache(loaded.config, num_blocks, BLOCK, "cpu", loaded.dtype)
        self.next_block = 1  # block 0 stays unused, so padded table entries point at junk

    def grow(self, seq: Seq, length: int) -> None:
        while len(seq.blocks) * BLOCK < length:
            seq.blocks.append(self.next_block)
            self.next_block += 1

    def step(self, work: list[tuple[Seq, int]]) -> torch.Tensor:
        """Compute ``n`` more tokens of each ``(seq, n)``; returns their last-token logits."""
        ids, pos, slots = [], [], []
        for seq, n in work:
            self.grow(seq, seq.computed + n)
            for p in range(seq.computed, seq.computed + n):
                ids.append(seq.tokens[p])
                pos.append(p)
                slots.append(seq.blocks[p // BLOCK] * BLOCK + p % BLOCK)
        width = max(len(s.blocks) for s, _ in work)
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots),
            query_lens=[n for _, n in work],
            context_lens=[s.computed + n for s, n in work],
            block_tables=torch.tensor([s.blocks + [0] * (width - len(s.blocks)) for s, _ in work], dtype=torch.int32),
            block_size=BLOCK,
        )
        logits = self.model(torch.tensor(ids), torch.tensor(pos), meta, self.kv)
        for seq, n in work:
            seq.computed += n
        return logits


def generate_paged(loaded, prompts: list[list[int]], new_tokens: int, chunk: int = 7) -> list[Seq]:
    """Greedy generation; prompt i starts at step i, prefills in chunks of ``chunk`` tokens."""
    driver = PagedDriver(loaded)
    seqs = [Seq(list(p)) for p in prompts]
    prompt_lens = [len(p) for p in prompts]
    step = 0
    while any(len(s.tokens) - pl < new_tokens for s, pl in zip(seqs, prompt_lens, strict=True)):
        work = []
        for i, s in enumerate(seqs[: step + 1]):
            if len(s.tokens) - prompt_lens[i] >= new_tokens:
                continue
            work.append((s, min(chunk, len(s.tokens) - s.computed)))
        logits = driver.step(work)
        for (s, _), row in zip(work, logits, strict=True):
            if s.computed == len(s.tokens):  # the chunk reached the end: sample
                s.logits.append(row)
                s.tokens.append(int(row.argmax()))
        step += 1
    return seqs


CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**COMMON, num_attention_heads=4, num_key_value_heads=4),
    "llama-gqa-rope-llama3": lambda: transformers.LlamaConfig(
        **COMMON,
        num_attention_heads=8,
        num_key_value_heads=2,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ),
    "llama-linear-rope-tied": lambda: transformers.LlamaConfig(
        **COMMON,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    ),
    "qwen2-bias-gqa": lambda: transformers.Qwen2Config(**COMMON, num_attention_heads=4, num_key_value_heads=2),
    "mistral-gqa": lambda: transformers.MistralConfig(
        **COMMON, num_attention_heads=4, num_key_value_heads=1, sliding_window=None
    ),
}


def _prompts(vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in PROMPT_LENS]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_tokens_and_logits_match_transformers(tmp_path, name):
    hf, ours = hf_checkpoint(tmp_path, CONFIGS[name]())
    assert ours.config.architecture == hf.config.architectures[0]
    prompts = _prompts(ours.config.vocab_size)
    seqs = generate_paged(ours, prompts, NEW_TOKENS)
    for prompt, seq in zip(prompts, seqs, strict=True):
        out = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
        assert seq.tokens == out.sequences[0].tolist()
        theirs = torch.stack([step_logits[0] for step_logits in out.logits])
        torch.testing.assert_close(torch.stack(seq.logits), theirs, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def gqa_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("gqa")
    return hf_checkpoint(path, CONFIGS["llama-gqa-rope-llama3"]())[1]


def test_chunked_prefill_equals_one_chunk(gqa_model):
    prompt = _prompts(gqa_model.config.vocab_size)[3]
    whole = PagedDriver(gqa_model).step([(Seq(prompt), len(prompt))])
    driver, seq = PagedDriver(gqa_model), Seq(prompt)
    driver.step([(seq, 10)])
    chunked = driver.step([(seq, len(prompt) - 10)])
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)


def test_prefix_shared_through_same_blocks(gqa_model):
    """A second sequence reuses the first one's two full prefix blocks and computes only its suffix."""
    prefix = _prompts(gqa_model.config.vocab_size)[2][: 2 * BLOCK]
    a_tail, b_tail = [11, 12, 13, 14, 15], [21, 22, 23]
    alone = PagedDriver(gqa_model).step([(Seq(prefix + b_tail), len(prefix) + 3)])

    driver = PagedDriver(gqa_model)
    a = Seq(prefix + a_tail)
    driver.step([(a, len(a.tokens))])
    b = Seq(prefix + b_tail, blocks=a.blocks[:2], computed=len(prefix))
    a.tokens.append(99)  # `a` decodes in the same step as `b`'s suffix prefill
    shared = driver.step([(a, 1), (b, len(b_tail))])
    torch.testing.assert_close(shared[1:], alone, atol=1e-5, rtol=0)
    assert b.blocks[:2] == a.blocks[:2]


def test_tokenizer_saved_by_transformers_encodes_the_same(gqa_model):
    theirs = transformers.AutoTokenizer.from_pretrained(gqa_model.path)
    text = "Blocks of 4 tokens: naïve café, 東京\n    return x"
    ids = gqa_model.tokenizer.encode(text)
    assert ids == theirs.encode(text)
    assert gqa_model.tokenizer.decode(ids + [2]) == theirs.decode(ids + [2], skip_special_tokens=True) == text


def test_checkpoint_renders_its_own_chat_template(tmp_path):
    """transformers saves the template to ``chat_template.jinja``; the loaded model renders it, not ChatML."""
    template = (
        "{% for m in messages %}[INST:{{ m['role'] }}] {{ m['content'] }} [/INST]{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}[ANSWER]{% endif %}"
    )
    _, ours = hf_checkpoint(tmp_path, CONFIGS["llama"](), chat_template=template)
    assert (tmp_path / "chat_template.jinja").read_text() == template
    messages = [{"role": "user", "content": "Hi"}]
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert ours.tokenizer.apply_chat_template(messages) == theirs == "[INST:user] Hi [/INST]<|im_end|>[ANSWER]"
