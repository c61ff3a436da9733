"""One entry point for any local Vary folder: ours (save_pretrained) or an official checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from vary.modeling.official import CheckpointError, load_official, official_family, read_config
from vary.modeling.processor import VaryProcessor
from vary.modeling.tokenizer import load_tokenizer
from vary.modeling.vary import VaryForCausalLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "qwen.tiktoken", "vocab.json", "merges.txt",
                   "added_tokens.json", "special_tokens_map.json")  # fmt: skip


def load_model(
    path: str | Path, dtype: torch.dtype = torch.float32, quantize: str | None = None, **overrides: Any
) -> VaryForCausalLM:
    """Load a model folder; official checkpoints are converted on the fly (`overrides` set their preprocessing).

    `quantize="int8"`: int8 decoder weights for CPU decoding (see vary.modeling.quantize); `dtype` (float32 or
    bfloat16) is then the vision branches' dtype.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a model folder")
    config = read_config(path)
    if quantize is not None:
        from vary.modeling.quantize import load_quantized

        return load_quantized(path, quantize, vision_dtype=dtype, **overrides)
    if official_family(config) is not None:
        return load_official(path, dtype=dtype, **overrides)
    if config.get("model_type") != "vary":
        raise CheckpointError(f"{path}/config.json: model_type {config.get('model_type')!r} is not a Vary model")
    try:
        model = VaryForCausalLM.from_pretrained(path, dtype=dtype, **overrides)
    except OSError as err:
        raise CheckpointError(f"{path}: {err}") from err
    return model.eval()


def load(
    path: str | Path, dtype: torch.dtype = torch.float32, quantize: str | None = None, **overrides: Any
) -> tuple[VaryForCausalLM, VaryProcessor]:
    """Model + processor (tokenizer included) from a local folder; `quantize`: see load_model."""
    model = load_model(path, dtype=dtype, quantize=quantize, **overrides)
    c = model.config
    ids = {"<img>": c.image_start_token_id, "</img>": c.image_end_token_id, "<imgpad>": c.image_patch_token_id}
    tokenizer = load_tokenizer(path, image_token_ids=ids)
    return model, VaryProcessor(c, tokenizer)


def convert(src: str | Path, dst: str | Path, dtype: torch.dtype = torch.float32, **overrides: Any) -> Path:
    """Write a checkpoint in our format (safetensors + config + its tokenizer files) at `dtype`: an official
    one, converted (`overrides` set its preprocessing), or one of ours, e.g. halved to float16 for shipping."""
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise CheckpointError(f"{dst}: the output folder must not be the input folder")
    if official_family(read_config(src)) is None and overrides:
        raise CheckpointError(f"{src}: our checkpoints carry their own preprocessing; only official ones take it")
    model = load_model(src, dtype=dtype, **overrides)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    return dst
