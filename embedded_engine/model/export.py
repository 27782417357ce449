"""Export a built-in preset as a Hugging Face checkpoint directory.

The directory holds what ``transformers`` and vLLM read: ``config.json``, ``model.safetensors``
(the preset's deterministic random weights under Hugging Face tensor names),
``generation_config.json``, ``tokenizer.json`` and ``tokenizer_config.json``. Loading it back with
:func:`~bottleneck_map.embedded_engine.model.loader.load_model` gives the same weights as the
preset with the same seed, so the engine and any other server can run the very same model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import save_file

from bottleneck_map.embedded_engine.model.loader import DTYPES, PRESETS_DIR, CheckpointError, preset_names
from bottleneck_map.embedded_engine.model.model_config import ModelConfig
from bottleneck_map.embedded_engine.model.weights import random_hf_state


def export_preset(
    preset: str, out: str | Path, *, seed: int = 0, dtype: str = "float32", overwrite: bool = False
) -> Path:
    """Write preset ``preset`` (weights from ``seed``, stored as ``dtype``) as an HF checkpoint in
    ``out``; returns ``out``. ``config.json`` names the dtype, so servers that follow the checkpoint
    (``--dtype auto``) run in it.

    Raises :class:`CheckpointError` for an unknown preset or dtype, or a non-empty ``out`` without
    ``overwrite``.
    """
    if dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if preset not in preset_names():
        raise CheckpointError(f"unknown preset {preset!r}; choose one of {', '.join(preset_names())}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"{out} is not empty (pass overwrite=True / --overwrite to replace its files)")
    out.mkdir(parents=True, exist_ok=True)
    raw = json.loads((PRESETS_DIR / preset / "config.json").read_text())
    cfg = ModelConfig.from_hf_dict(raw, name=preset)
    state = {k: v.to(DTYPES[dtype]).contiguous() for k, v in random_hf_state(cfg, seed).items()}
    raw = {**raw, "torch_dtype": dtype}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    eos = list(cfg.eos_token_ids)
    generation = {"bos_token_id": raw.get("bos_token_id"), "eos_token_id": eos[0] if len(eos) == 1 else eos}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    shutil.copyfile(PRESETS_DIR / "tokenizer.json", out / "tokenizer.json")
    shutil.copyfile(PRESETS_DIR / "tokenizer_config.json", out / "tokenizer_config.json")
    return out
