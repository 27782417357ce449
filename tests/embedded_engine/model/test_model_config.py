from __future__ import annotations

import json

import pytest
import torch

from bottleneck_map.embedded_engine.model.loader import PRESETS_DIR, preset_names
from bottleneck_map.embedded_engine.model.model import CausalLM
from bottleneck_map.embedded_engine.model.model_config import ModelConfig

V4_LLAMA3 = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "max_position_embeddings": 131072,
    "tie_word_embeddings": True,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
}


def test_reads_a_transformers_v4_llama3_config():
    cfg = ModelConfig.from_hf_dict(V4_LLAMA3, "llama-3.2-1b")
    assert cfg.head_dim == 64
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling["rope_type"] == "llama3" and cfg.rope_scaling["factor"] == 32.0
    assert cfg.eos_token_ids == (128001, 128008, 128009)
    assert not cfg.attention_bias
    assert cfg.num_parameters == 1_235_814_400  # Llama-3.2-1B's published parameter count


def test_reads_a_transformers_v5_rope_parameters_block():
    d = {k: v for k, v in V4_LLAMA3.items() if k not in ("rope_theta", "rope_scaling")}
    d["rope_parameters"] = {"rope_theta": 500000.0, **V4_LLAMA3["rope_scaling"]}
    assert ModelConfig.from_hf_dict(d, "x") == ModelConfig.from_hf_dict(V4_LLAMA3, "x")
    d["rope_parameters"] = {"rope_theta": 10000.0, "rope_type": "default"}
    cfg = ModelConfig.from_hf_dict(d, "x")
    assert cfg.rope_scaling is None and cfg.rope_theta == 10000.0


def test_qwen2_always_has_qkv_bias_but_no_output_bias():
    cfg = ModelConfig.from_hf_dict({**V4_LLAMA3, "architectures": ["Qwen2ForCausalLM"]}, "q")
    assert cfg.attention_bias and not cfg.o_proj_bias


def test_mistral_sliding_window_caps_the_context():
    cfg = ModelConfig.from_hf_dict({**V4_LLAMA3, "architectures": ["MistralForCausalLM"], "sliding_window": 4096}, "m")
    assert cfg.max_position_embeddings == 4096


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architectures": ["GPT2LMHeadModel"]}, "unsupported architecture 'GPT2LMHeadModel'"),
        ({"num_key_value_heads": 5}, "multiple of"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "unsupported rope_scaling type 'yarn'"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"eos_token_id": 999999}, "outside the vocabulary"),
        ({"hidden_size": 0}, "hidden_size"),
    ],
)
def test_rejects_what_it_cannot_run(change, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_hf_dict({**V4_LLAMA3, **change}, "bad")


@pytest.mark.parametrize("preset", preset_names())
def test_parameter_count_matches_the_built_model(preset):
    cfg = ModelConfig.from_hf_dict(json.loads((PRESETS_DIR / preset / "config.json").read_text()), preset)
    model = CausalLM(cfg, torch.float32, "meta")
    assert cfg.num_parameters == sum(p.numel() for p in model.parameters())


def test_meta_section_has_the_shared_keys():
    meta = ModelConfig.from_hf_dict(V4_LLAMA3, "m").to_meta(torch.bfloat16)
    required = {
        "name",
        "architecture",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "tie_word_embeddings",
        "dtype",
        "dtype_bytes",
        "num_parameters",
        "max_position_embeddings",
    }
    assert required <= set(meta)
    assert meta["dtype"] == "bfloat16" and meta["dtype_bytes"] == 2
    json.dumps(meta)
