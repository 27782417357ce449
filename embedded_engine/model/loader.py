"""Load a model: a built-in preset (random weights from a seed) or a local Hugging Face checkpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from bottleneck_map.embedded_engine.model.model import CausalLM
from bottleneck_map.embedded_engine.model.model_config import ModelConfig
from bottleneck_map.embedded_engine.model.tokenizer import Tokenizer
from bottleneck_map.embedded_engine.model.weights import MissingWeightsError, load_hf_state, random_hf_state

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(Exception):
    """The model directory is not a checkpoint this engine can load; the message says why."""


@dataclass
class LoadedModel:
    config: ModelConfig
    model: CausalLM
    tokenizer: Tokenizer
    generation_config: dict
    path: Path | None

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device


def preset_names() -> list[str]:
    return sorted(p.name for p in PRESETS_DIR.iterdir() if (p / "config.json").is_file())


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        return torch.device(name)
    raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda")


def resolve_dtype(name: str, device: torch.device, checkpoint_dtype: str | None = None) -> torch.dtype:
    """``auto``: float32 on CPU; on CUDA the checkpoint's dtype, else bfloat16."""
    if name == "auto":
        if device.type == "cpu":
            return torch.float32
        return DTYPES.get(checkpoint_dtype or "", torch.bfloat16)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def load_model(model: str = "default", device: str = "auto", dtype: str = "auto", seed: int = 0) -> LoadedModel:
    """Load a preset by name (``default``, ``tiny``, ``small-150m``, ...) or a checkpoint directory."""
    dev = resolve_device(device)
    if model in preset_names():
        cfg_dict = _read_json(PRESETS_DIR / model / "config.json")
        cfg = ModelConfig.from_hf_dict(cfg_dict, name=model)
        torch_dtype = resolve_dtype(dtype, dev, None)
        net = CausalLM(cfg, torch_dtype, dev)
        load_hf_state(net, random_hf_state(cfg, seed))
        tokenizer = Tokenizer.from_dir(PRESETS_DIR, cfg.eos_token_ids)
        return LoadedModel(cfg, net, tokenizer, {"eos_token_id": list(cfg.eos_token_ids)}, None)
    path = Path(model).expanduser()
    if not path.is_dir():
        raise CheckpointError(
            f"{model!r} is neither a built-in preset ({', '.join(preset_names())}) nor a checkpoint directory"
        )
    return _load_checkpoint(path.resolve(), dev, dtype)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"missing {path.name} in {path.parent}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e


def _load_checkpoint(path: Path, dev: torch.device, dtype: str) -> LoadedModel:
    raw = _read_json(path / "config.json")
    if not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"missing tokenizer.json in {path} (only fast tokenizers are supported)")
    gen_path = path / "generation_config.json"
    generation_config = _read_json(gen_path) if gen_path.is_file() else {}
    gen_eos = generation_config.get("eos_token_id")
    gen_eos = gen_eos if isinstance(gen_eos, list) else ([] if gen_eos is None else [gen_eos])
    try:
        cfg = ModelConfig.from_hf_dict(raw, name=path.name)
        cfg = cfg.with_eos(tuple(dict.fromkeys([*cfg.eos_token_ids, *map(int, gen_eos)])))
    except (KeyError, TypeError, ValueError) as e:
        what = f"missing key {e}" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(f"{path / 'config.json'}: {what}") from e
    try:
        tokenizer = Tokenizer.from_dir(path, cfg.eos_token_ids)
    except Exception as e:  # tokenizers raises plain Exceptions for malformed files
        raise CheckpointError(f"cannot read the tokenizer in {path}: {e}") from e
    eos_id = tokenizer.backend.token_to_id(tokenizer.special_tokens.get("eos_token", ""))
    if not cfg.eos_token_ids and eos_id is not None and eos_id < cfg.vocab_size:
        cfg = cfg.with_eos((eos_id,))  # neither config nor generation_config names one
        tokenizer.eos_token_ids = cfg.eos_token_ids
    if tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(
            f"tokenizer.json has {tokenizer.vocab_size} tokens but the model's vocab_size is {cfg.vocab_size}"
        )
    torch_dtype = resolve_dtype(dtype, dev, raw.get("dtype") or raw.get("torch_dtype"))
    net = CausalLM(cfg, torch_dtype, dev)
    with ExitStack() as stack:
        tensors = _SafetensorsView(_weight_files(path), stack)
        try:
            load_hf_state(net, tensors)
        except MissingWeightsError as e:
            raise CheckpointError(f"{path}: {e}") from e
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from e
    return LoadedModel(cfg, net, tokenizer, generation_config, path)


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        if not shards:
            raise CheckpointError(f"{index} lists no shards")
        for shard in shards:
            if not (path / shard).is_file():
                raise CheckpointError(f"missing shard {shard} listed in {index.name} in {path}")
        return [path / s for s in shards]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        legacy = [p.name for p in path.glob("*.bin")]
        hint = f" (found {', '.join(legacy)}: convert it to safetensors)" if legacy else ""
        raise CheckpointError(f"missing model.safetensors (no *.safetensors weights) in {path}{hint}")
    return files


class _SafetensorsView(Mapping):
    """Tensors of several safetensors files, read lazily by name."""

    def __init__(self, files: list[Path], stack: ExitStack) -> None:
        self._where = {}
        for f in files:
            try:
                handle = stack.enter_context(safe_open(str(f), framework="pt", device="cpu"))
            except Exception as e:  # safetensors raises its own error types for corrupt headers
                raise CheckpointError(f"cannot read {f}: {e}") from e
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a Mapping
                self._where[key] = handle

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._where[key].get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)
