"""Llama-family decoder (Llama, Mistral, Qwen2) over a paged KV cache.

RMSNorm, rotary position embeddings (plain, ``linear`` or Llama-3 scaled), grouped-query attention,
SwiGLU MLP, tied or untied embeddings, optional q/k/v bias (Qwen2). Query/key/value and gate/up
projections are fused into one linear layer each; :mod:`weights` maps Hugging Face tensor names.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bottleneck_map.embedded_engine.model import cpu_attention
from bottleneck_map.embedded_engine.model.attention import (
    AttentionMetadata,
    ensure_workspace,
    paged_attention,
    plan_attention,
)
from bottleneck_map.embedded_engine.model.kv_cache import KVCache
from bottleneck_map.embedded_engine.model.linear import Linear, PackedWeight
from bottleneck_map.embedded_engine.model.model_config import ModelConfig


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse rotary frequencies, with ``rope_scaling`` applied as transformers does."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    factor = float(s["factor"])
    if s["rope_type"] == "linear":
        return inv_freq / factor
    old_len = s["original_max_position_embeddings"]
    low, high = s["low_freq_factor"], s["high_freq_factor"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size, dtype=dtype, device=device), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), self.weight.shape, None, self.eps).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` [T, heads, D]; ``cos``/``sin`` [T, 1, D] (rotate-half layout, as in transformers)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        self.q_size, self.kv_size = cfg.q_size, cfg.kv_size
        self.scale = cfg.head_dim**-0.5
        kw = {"dtype": dtype, "device": device}
        self.qkv_proj = Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, bias=cfg.attention_bias, **kw)
        self.o_proj = Linear(cfg.q_size, cfg.hidden_size, bias=cfg.o_proj_bias, **kw)

    def forward(self, x, cos, sin, plan, kv: KVCache) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = apply_rope(q.view(t, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(k.view(t, self.num_kv_heads, self.head_dim), cos, sin)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        o = paged_attention(q, k, v, kv.k[self.layer], kv.v[self.layer], plan, self.scale)
        return self.o_proj(o.reshape(t, self.q_size))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        kw = {"bias": False, "dtype": dtype, "device": device}
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, **kw)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)
        self.self_attn = Attention(cfg, layer, dtype, device)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)
        self.mlp = MLP(cfg, dtype, device)

    def forward(self, x, cos, sin, plan, kv: KVCache) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, plan, kv)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype, device=device)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, dtype, device) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)


class CausalLM(nn.Module):
    """``forward`` returns float32 logits ``[num_seqs, vocab]`` for each sequence's last new token,
    or ``[len(rows), vocab]`` for the token rows ``rows`` of the step when given."""

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        device = torch.device(device)
        self.config, self.dtype, self.device = cfg, dtype, device
        # Built on the meta device and then materialised: skips torch's random init, which the
        # loader overwrites anyway. Until weights are loaded, matrices are zero and norms one.
        meta = torch.device("meta")
        self.model = Backbone(cfg, dtype, meta)
        if cfg.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype, device=meta)
        self.to_empty(device=device)
        with torch.no_grad():  # in place on the parameter, so its version counter moves
            for name, p in self.named_parameters():
                p.fill_(1.0 if name.endswith("norm.weight") else 0.0)
        self.register_buffer("inv_freq", rope_inv_freq(cfg).to(device), persistent=False)
        self._workspace: list[torch.Tensor] = []  # attention gather buffers, kept across steps
        self._output_pack = PackedWeight()  # the output projection (lm_head or the tied embedding)
        # float32 on the CPU: decodes read the paged cache in place (None: the portable gather + SDPA)
        cpu32 = device.type == "cpu" and dtype == torch.float32
        self.decode_kernel = cpu_attention.decode_kernel() if cpu32 else None
        self.requires_grad_(False)
        self.eval()

    @property
    def output_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv: KVCache,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        plan = plan_attention(meta, self.device, self.decode_kernel)
        self._workspace = ensure_workspace(plan, self._workspace, kv.k[0])
        x = self.model.embed_tokens(input_ids.to(self.device))
        cos, sin = self.rope(positions.to(self.device))
        for layer in self.model.layers:
            x = layer(x, cos, sin, plan, kv)
        x = self.model.norm(x[plan.last_rows if rows is None else rows.to(self.device)])
        return self._output_pack.linear(x, self.output_weight).float()
