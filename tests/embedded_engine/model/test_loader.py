from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from bottleneck_map.embedded_engine.model.attention import AttentionMetadata
from bottleneck_map.embedded_engine.model.kv_cache import allocate_kv_cache
from bottleneck_map.embedded_engine.model.loader import (
    PRESETS_DIR,
    CheckpointError,
    load_model,
    preset_names,
    resolve_device,
    resolve_dtype,
)
from bottleneck_map.embedded_engine.model.model_config import ModelConfig
from bottleneck_map.embedded_engine.model.weights import random_hf_state

CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "vocab_size": 8192,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}


def _write_checkpoint(path, config=CONFIG, shards=1, seed=3):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    shutil.copy(PRESETS_DIR / "tokenizer.json", path / "tokenizer.json")
    state = random_hf_state(ModelConfig.from_hf_dict(config, "x"), seed)
    state = {k: v + 0.01 if k.endswith(".bias") else v for k, v in state.items()}
    names = sorted(state)
    if shards == 1:
        save_file(state, str(path / "model.safetensors"))
        return state
    weight_map = {}
    for i in range(shards):
        part = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        chunk = {n: state[n] for n in names[i::shards]}
        save_file(chunk, str(path / part))
        weight_map.update(dict.fromkeys(chunk, part))
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return state


def _logits(loaded, prompt):
    kv = allocate_kv_cache(loaded.config, 8, 16, "cpu", loaded.dtype)
    n = len(prompt)
    meta = AttentionMetadata(torch.arange(n), [n], [n], torch.zeros(1, 1, dtype=torch.int32), 16)
    return loaded.model(torch.tensor(prompt), torch.arange(n), meta, kv)


def test_single_file_and_sharded_checkpoints_load_the_same_weights(tmp_path):
    state = _write_checkpoint(tmp_path / "one")
    _write_checkpoint(tmp_path / "sharded", shards=3)
    one = load_model(str(tmp_path / "one"), device="cpu")
    sharded = load_model(str(tmp_path / "sharded"), device="cpu")
    assert one.dtype == torch.float32  # auto on CPU, whatever the checkpoint's dtype
    qkv = one.model.model.layers[1].self_attn.qkv_proj
    expected = torch.cat([state[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv"])
    torch.testing.assert_close(qkv.weight, expected)
    torch.testing.assert_close(qkv.bias, torch.cat([state[f"model.layers.1.self_attn.{p}_proj.bias"] for p in "qkv"]))
    torch.testing.assert_close(_logits(one, [5, 6, 7]), _logits(sharded, [5, 6, 7]))
    assert one.path == (tmp_path / "one").resolve()


def test_generation_config_adds_eos_ids(tmp_path):
    _write_checkpoint(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7], "temperature": 0.6}))
    loaded = load_model(str(tmp_path), device="cpu")
    assert loaded.config.eos_token_ids == (2, 7)
    assert loaded.tokenizer.eos_token_ids == (2, 7)
    assert loaded.generation_config["temperature"] == 0.6


def test_eos_falls_back_to_the_tokenizer_config(tmp_path):
    _write_checkpoint(tmp_path, config={k: v for k, v in CONFIG.items() if k != "eos_token_id"})
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|im_end|>"}}))
    loaded = load_model(str(tmp_path), device="cpu")
    assert loaded.config.eos_token_ids == loaded.tokenizer.eos_token_ids == (2,)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda p: (p / "config.json").unlink(), "missing config.json"),
        (lambda p: (p / "tokenizer.json").unlink(), "missing tokenizer.json"),
        (lambda p: (p / "model.safetensors").unlink(), "missing model.safetensors"),
        (lambda p: (p / "config.json").write_text("{"), "not valid JSON"),
        (lambda p: (p / "tokenizer.json").write_text("{}"), "cannot read the tokenizer"),
        (lambda p: (p / "tokenizer_config.json").write_text("{"), "cannot read the tokenizer"),
        (
            lambda p: (p / "config.json").write_text(json.dumps({**CONFIG, "architectures": ["GPT2LMHeadModel"]})),
            "unsupported architecture 'GPT2LMHeadModel'",
        ),
        (
            lambda p: (p / "config.json").write_text(json.dumps({**CONFIG, "num_hidden_layers": 3})),
            "missing tensors: model.layers.2",
        ),
        (
            lambda p: (p / "config.json").write_text(json.dumps({**CONFIG, "intermediate_size": 48})),
            "shape",
        ),
        (lambda p: (p / "config.json").write_text(json.dumps({**CONFIG, "vocab_size": 100})), "vocab_size"),
    ],
)
def test_broken_checkpoints_are_named_errors(tmp_path, breakage, message):
    _write_checkpoint(tmp_path)
    breakage(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        load_model(str(tmp_path), device="cpu")


def test_missing_shard_is_named(tmp_path):
    _write_checkpoint(tmp_path, shards=2)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing shard model-00002-of-00002.safetensors"):
        load_model(str(tmp_path), device="cpu")


def test_unknown_name_is_neither_preset_nor_directory(tmp_path):
    with pytest.raises(CheckpointError, match="neither a built-in preset"):
        load_model(str(tmp_path / "nope"))


def test_presets_are_deterministic_per_seed():
    assert {"default", "tiny", "small-150m"} <= set(preset_names())
    a, b, c = load_model("tiny", seed=0), load_model("tiny", seed=0), load_model("tiny", seed=1)
    wa, wb, wc = (m.model.model.layers[0].mlp.down_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert 0.015 < wa.std() < 0.025
    assert a.path is None and a.config.name == "tiny"


def test_preset_dtype_is_a_cast_of_the_same_weights():
    f32, bf16 = load_model("tiny", dtype="float32"), load_model("tiny", dtype="bfloat16")
    w32 = f32.model.model.embed_tokens.weight
    assert bf16.model.model.embed_tokens.weight.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.model.model.embed_tokens.weight, w32.to(torch.bfloat16))


def test_default_preset_is_sized_for_memory_bound_decode():
    cfg = ModelConfig.from_hf_dict(json.loads((PRESETS_DIR / "default" / "config.json").read_text()), "default")
    assert 25e6 <= cfg.num_parameters <= 40e6  # 100-160 MB of float32 weights: far beyond L2


def test_device_and_dtype_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu, "bfloat16") == torch.float32
    assert resolve_dtype("auto", gpu, "float16") == torch.float16
    assert resolve_dtype("auto", gpu, None) == torch.bfloat16
    assert resolve_dtype("float16", cpu) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8", cpu)
