"""Weights: Hugging Face tensor names to the fused layout, and deterministic random weights for presets."""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import torch

from bottleneck_map.embedded_engine.model.model import CausalLM
from bottleneck_map.embedded_engine.model.model_config import ModelConfig

INIT_STD = 0.02


class MissingWeightsError(KeyError):
    """Tensors the model needs are absent from the checkpoint."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(names)
        self.names = names

    def __str__(self) -> str:
        more = f" (and {len(self.names) - 5} more)" if len(self.names) > 5 else ""
        return "missing tensors: " + ", ".join(self.names[:5]) + more


def hf_tensor_names(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a Hugging Face checkpoint of this config holds, with its shape."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    for n in range(cfg.num_hidden_layers):
        p = f"model.layers.{n}."
        for proj, out in (("q_proj", cfg.q_size), ("k_proj", cfg.kv_size), ("v_proj", cfg.kv_size)):
            shapes[f"{p}self_attn.{proj}.weight"] = (out, h)
            if cfg.attention_bias:
                shapes[f"{p}self_attn.{proj}.bias"] = (out,)
        shapes[f"{p}self_attn.o_proj.weight"] = (h, cfg.q_size)
        if cfg.o_proj_bias:
            shapes[f"{p}self_attn.o_proj.bias"] = (h,)
        shapes[f"{p}mlp.gate_proj.weight"] = (i, h)
        shapes[f"{p}mlp.up_proj.weight"] = (i, h)
        shapes[f"{p}mlp.down_proj.weight"] = (h, i)
        shapes[f"{p}input_layernorm.weight"] = (h,)
        shapes[f"{p}post_attention_layernorm.weight"] = (h,)
    return shapes


def _fused_sources(name: str) -> list[str]:
    """HF names whose concatenation (along dim 0) gives our parameter ``name``."""
    for fused, parts in (("qkv_proj", ("q_proj", "k_proj", "v_proj")), ("gate_up_proj", ("gate_proj", "up_proj"))):
        if f".{fused}." in name:
            return [name.replace(fused, part) for part in parts]
    return [name]


def load_hf_state(model: CausalLM, tensors: Mapping[str, torch.Tensor]) -> None:
    """Copy HF-named ``tensors`` into ``model`` (casting to its dtype, moving to its device).

    Raises :class:`MissingWeightsError` naming absent tensors, ``ValueError`` on a shape mismatch.
    """
    params = dict(model.named_parameters())
    missing = [src for name in params for src in _fused_sources(name) if src not in tensors]
    if missing:
        raise MissingWeightsError(missing)
    for name, param in params.items():
        parts = [tensors[src] for src in _fused_sources(name)]
        value = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(
                f"tensor {name}: checkpoint shape {tuple(value.shape)}, config expects {tuple(param.shape)}"
            )
        with torch.no_grad():  # in place on the parameter (not .data), so its version counter moves
            param.copy_(value.to(dtype=param.dtype))


def random_hf_state(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic float32 weights: N(0, 0.02) matrices, zero biases, unit norm weights.

    Each tensor has its own generator seeded from ``seed`` and its name, so the values depend on
    neither iteration order nor dtype.
    """
    out = {}
    for name, shape in hf_tensor_names(cfg).items():
        if name.endswith("norm.weight"):
            out[name] = torch.ones(shape)
        elif name.endswith(".bias"):
            out[name] = torch.zeros(shape)
        else:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            out[name] = torch.randn(shape, generator=gen).mul_(INIT_STD)
    return out
