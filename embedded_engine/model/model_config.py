"""Model configuration: the subset of a Hugging Face ``config.json`` the Llama-family decoder needs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def dtype_name(dtype: Any) -> str:
    """``torch.float32`` / ``"float32"`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    name: str

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.architecture!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        for field in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if not self.rms_norm_eps > 0 or not self.rope_theta > 0:
            raise ValueError("rms_norm_eps and rope_theta must be positive")
        if self.rope_scaling is not None:
            _validate_rope_scaling(self.rope_scaling)
        for tid in (*self.eos_token_ids, *(() if self.bos_token_id is None else (self.bos_token_id,))):
            if not 0 <= tid < self.vocab_size:
                raise ValueError(f"special token id {tid} outside the vocabulary (size {self.vocab_size})")

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def o_proj_bias(self) -> bool:
        """Llama's ``attention_bias`` puts a bias on all four projections; Qwen2 only on q, k and v."""
        return self.attention_bias and self.architecture != "Qwen2ForCausalLM"

    @property
    def num_parameters(self) -> int:
        h, i, n = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        qkv = h * (self.q_size + 2 * self.kv_size) + (self.q_size + 2 * self.kv_size if self.attention_bias else 0)
        o = self.q_size * h + (h if self.o_proj_bias else 0)
        layer = qkv + o + 3 * h * i + 2 * h
        embed = self.vocab_size * h
        return embed + n * layer + h + (0 if self.tie_word_embeddings else embed)

    @classmethod
    def from_hf_dict(cls, d: dict, name: str) -> ModelConfig:
        """Build from a parsed HF ``config.json`` (transformers v4 or v5 layout)."""
        archs = d.get("architectures") or []
        if not archs:
            model_type = d.get("model_type")
            archs = [
                {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}.get(
                    model_type, f"<model_type {model_type!r}>"
                )
            ]
        arch = archs[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"unsupported architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
        if d.get("mlp_bias"):
            raise ValueError("mlp_bias=true is not supported")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"unsupported hidden_act {act!r}; only 'silu' (SwiGLU) is supported")
        heads = d["num_attention_heads"]
        head_dim = d.get("head_dim") or d["hidden_size"] // heads
        rope_params = dict(d.get("rope_parameters") or {})  # transformers v5
        rope_theta = float(rope_params.pop("rope_theta", d.get("rope_theta", 10000.0)))
        scaling = d.get("rope_scaling") or (rope_params or None)
        if scaling is not None:
            scaling = dict(scaling)
            rope_type = scaling.pop("rope_type", scaling.pop("type", "default"))
            scaling.pop("rope_theta", None)
            scaling = None if rope_type == "default" else {"rope_type": rope_type, **scaling}
        max_pos = int(d.get("max_position_embeddings", 2048))
        window = d.get("sliding_window")
        if window and d.get("use_sliding_window", True) and window < max_pos:
            max_pos = int(window)  # attention is exact as long as no sequence outgrows the window
        eos = d.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return cls(
            architecture=arch,
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=int(heads),
            num_key_value_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=scaling,
            max_position_embeddings=max_pos,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=arch == "Qwen2ForCausalLM" or bool(d.get("attention_bias", False)),
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=eos_ids,
            name=name,
        )

    def with_eos(self, eos_token_ids: tuple[int, ...]) -> ModelConfig:
        return replace(self, eos_token_ids=tuple(eos_token_ids))

    def to_meta(self, dtype: Any) -> dict:
        """The ``meta["model"]`` section of a trace bundle."""
        name = dtype_name(dtype)
        return {
            "name": self.name,
            "architecture": self.architecture,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "dtype": name,
            "dtype_bytes": _DTYPE_BYTES[name],
            "num_parameters": self.num_parameters,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
        }


def _validate_rope_scaling(s: dict) -> None:
    rope_type = s.get("rope_type")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"unsupported rope_scaling type {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    if rope_type == "default":
        return
    if not float(s.get("factor", 0)) > 0:
        raise ValueError(f"rope_scaling {rope_type!r} needs a positive 'factor'")
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            if key not in s:
                raise ValueError(f"rope_scaling 'llama3' needs {key!r}")
        if not s["high_freq_factor"] > s["low_freq_factor"]:
            raise ValueError("rope_scaling 'llama3' needs high_freq_factor > low_freq_factor")
