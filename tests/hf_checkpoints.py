"""Tiny random Hugging Face checkpoints for parity tests: saved with ``save_pretrained`` and our
BPE tokenizer as transformers writes it, then loaded by our engine."""

from __future__ import annotations

import pytest
import torch

from bottleneck_map.embedded_engine.model.loader import PRESETS_DIR, load_model

transformers = pytest.importorskip("transformers")


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Random weights with visible structure: non-zero biases and non-unit norms too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if "norm" in name else 0.15 * noise)


def hf_checkpoint(tmp_path, config, chat_template: str | None = None) -> tuple:
    """A random ``config`` model saved in ``tmp_path`` (with ``chat_template`` if given, which
    transformers writes to ``chat_template.jinja``); returns (transformers model, our LoadedModel)."""
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _randomize(hf, seed=1)
    hf.eval()
    hf.save_pretrained(tmp_path)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(PRESETS_DIR / "tokenizer.json"), eos_token="<|im_end|>", bos_token="<|endoftext|>"
    )
    fast.chat_template = chat_template
    fast.save_pretrained(tmp_path)  # tokenizer.json + tokenizer_config.json as transformers writes them
    return hf, load_model(str(tmp_path), device="cpu", dtype="float32")


COMMON = dict(
    vocab_size=8192,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    max_position_embeddings=256,
    bos_token_id=0,
    eos_token_id=2,
)
