"""One entry point for any Vary model: ours (save_pretrained), an official Vary / GOT-OCR2 checkpoint, or
transformers' GotOcr2ForConditionalGeneration, in a local folder or on the hub (`org/name[@revision]` or a known
name, see hub.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from vary.modeling.got import export_hf_got, is_hf_got, load_hf_got
from vary.modeling.hub import loader_defaults, resolve_model
from vary.modeling.lazy_weights import load_float
from vary.modeling.lexicon import LEXICON_FILE, Lexicon
from vary.modeling.official import CheckpointError, load_official, official_family, read_config
from vary.modeling.processor import VaryProcessor
from vary.modeling.tokenizer import load_tokenizer
from vary.modeling.vary import VaryForCausalLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "qwen.tiktoken", "vocab.json", "merges.txt",
                   "added_tokens.json", "special_tokens_map.json", LEXICON_FILE)  # fmt: skip


def locate(spec: str | Path, overrides: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The local folder for a model spec (downloaded if needed), and the overrides with the registry's
    loading defaults for that model underneath them."""
    return resolve_model(spec), loader_defaults(spec) | overrides


def load_model(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    allow_missing: bool = False,
    quantize: str | None = None,
    **overrides: Any,
) -> VaryForCausalLM:
    """Load a model folder, hub id or known name; official checkpoints are converted on the fly (`overrides` set
    their preprocessing).

    Every weight of the model must be in the checkpoint: a missing tensor would silently stay at random
    values (transformers only logs it). `allow_missing=True` is the opt-out for a deliberate partial load
    (official formats are always strict). `quantize="int8"`: int8 decoder weights for CPU decoding (see
    vary.modeling.quantize); `dtype` (float32 or bfloat16) is then the vision branches' dtype. safetensors
    folders are read tensor by tensor (vary.modeling.lazy_weights): the load peaks at the model's size, not the
    model's plus the file's.
    """
    path, overrides = locate(path, overrides)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a model folder")
    config = read_config(path)
    family, hf_got = official_family(config), is_hf_got(config)
    if family is None and not hf_got and config.get("model_type") != "vary":
        raise CheckpointError(f"{path}/config.json: model_type {config.get('model_type')!r} is not a Vary model")
    if quantize is not None:
        from vary.modeling.quantize import load_quantized, quantize_model_

        model = load_quantized(path, quantize, vision_dtype=dtype, **overrides)
        if model is None:  # pickled weights cannot be read lazily: the float32 model first, quantized in place
            model = quantize_model_(load_model(path, allow_missing=allow_missing, **overrides), quantize, dtype)
        return model
    if not allow_missing and (model := load_float(path, dtype, **overrides)) is not None:
        return model  # safetensors, read tensor by tensor: peak memory is the model, not the model + the file
    if family is not None:
        return load_official(path, dtype=dtype, **overrides)
    if hf_got:
        return load_hf_got(path, dtype=dtype, **overrides)
    try:
        model, info = VaryForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True, **overrides)
    except OSError as err:
        raise CheckpointError(f"{path}: {err}") from err
    problems = {"missing": sorted(info["missing_keys"]), "with the wrong shape": sorted(info["mismatched_keys"])}
    problems = {what: keys for what, keys in problems.items() if keys}
    if problems and not allow_missing:
        raise CheckpointError(
            f"{path}: incomplete checkpoint, "
            + "; ".join(f"{len(keys)} weight(s) {what} (e.g. {keys[0]})" for what, keys in problems.items())
            + " - they would be random; pass allow_missing=True only for a deliberate partial load"
        )
    return model.eval()


def load(
    path: str | Path, dtype: torch.dtype = torch.float32, quantize: str | None = None, **overrides: Any
) -> tuple[VaryForCausalLM, VaryProcessor]:
    """Model + processor (tokenizer included) from a local folder, a hub id or a known name; `quantize`: see
    load_model."""
    path, overrides = locate(path, overrides)
    model = load_model(path, dtype=dtype, quantize=quantize, **overrides)
    c = model.config
    ids = {"<img>": c.image_start_token_id, "</img>": c.image_end_token_id, "<imgpad>": c.image_patch_token_id}
    tokenizer = load_tokenizer(path, image_token_ids=ids)
    lexicon = Lexicon.from_file(path / LEXICON_FILE) if (path / LEXICON_FILE).is_file() else None
    return model, VaryProcessor(c, tokenizer, lexicon=lexicon)


CONVERT_FORMATS = ("vary", "hf")


def convert(
    src: str | Path, dst: str | Path, dtype: torch.dtype = torch.float32, format: str = "vary", **overrides: Any
) -> Path:
    """Write a checkpoint at `dtype`: an official one, converted (`overrides` set its preprocessing), or one of
    ours, e.g. halved to float16 for shipping. `format` "vary": our format (safetensors + config + its tokenizer
    files); "hf": transformers' GotOcr2ForConditionalGeneration (GOT-shaped models only), tokenizer.json included."""
    src, dst = Path(src), Path(dst)
    if format not in CONVERT_FORMATS:
        raise CheckpointError(f"format must be one of {CONVERT_FORMATS}, got {format!r}")
    if dst.resolve() == src.resolve():
        raise CheckpointError(f"{dst}: the output folder must not be the input folder")
    src_config = read_config(src)
    if official_family(src_config) is None and not is_hf_got(src_config) and overrides:
        raise CheckpointError(f"{src}: our checkpoints carry their own preprocessing; only official ones take it")
    model = load_model(src, dtype=dtype, **overrides)  # strict: never write a complete-looking partial model
    if format == "hf":
        c = model.config
        ids = {"<img>": c.image_start_token_id, "</img>": c.image_end_token_id, "<imgpad>": c.image_patch_token_id}
        tokenizer = load_tokenizer(src, image_token_ids=ids) if _has_tokenizer(src) else None
        return export_hf_got(model, dst, tokenizer=tokenizer)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    return dst


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "qwen.tiktoken", "vocab.json"))
