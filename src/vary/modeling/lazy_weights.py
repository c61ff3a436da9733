"""Reading safetensors checkpoints tensor by tensor, for loads that never hold a checkpoint and its model at once.

transformers' `from_pretrained` and our float loaders of the released layouts read a checkpoint whole: its mapped
pages stay resident while the model is filled, so loading a 16-bit release in float32 peaks at file + model
(GOT-OCR2: 3.70 GB; Vary-toy: 13.85 GB with a page). `LazyWeights` reads tensors by our key names (released
layouts renamed as they are read) and closes the file as it goes; `load_float` fills a meta-device model from it
(GOT-OCR2 in float32 from bf16: 2.67 GB, for a 2.3 GB model + 0.4 GB of imports), and vary.modeling.quantize's
int8 load reads its decoder one layer at a time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn
from transformers import GenerationConfig


class LazyWeights:
    """Tensors of safetensors files by our key names, read on demand (floating ones in the dtype asked for).

    safetensors maps a file into memory and hands out views of it; every page read stays resident (and counted
    in RSS) until the mapping is released, i.e. until the file is closed and no view is alive. So each `take`
    closes the file again; tensors that the model keeps are copied out (`copy=True`), tensors that are only
    read to be quantized stay views, and their pages leave RSS with the mapping (copies of those would land in
    malloc's heap, which does not give freed memory back to the OS reliably).

    `rename` ({our key: (key in the files, part)}, see official.convert_keys) reads a checkpoint of another
    layout under our names; part i of 3 is a slice of a fused q/k/v matrix.
    """

    def __init__(self, files: list[Path]):
        self.where: dict[str, Path] = {}  # key in the files -> file
        self.shapes: dict[str, tuple[int, ...]] = {}
        from vary.modeling.official import CheckpointError

        for path in files:
            try:
                with safe_open(str(path), framework="pt") as handle:
                    for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                        self.where[key] = path
                        self.shapes[key] = tuple(handle.get_slice(key).get_shape())
            except (OSError, SafetensorError) as err:
                raise CheckpointError(f"{path}: cannot read weights ({err})") from err
        self.source: dict[str, tuple[str, int | None]] = {key: (key, None) for key in self.where}

    def meta_state_dict(self) -> dict[str, Tensor]:
        """Shape-only tensors of the files' keys: what the official config readers need, read from the headers."""
        return {key: torch.empty(shape, device="meta") for key, shape in self.shapes.items()}

    def rename(self, rename: dict[str, tuple[str, int | None]]) -> None:
        self.source = rename

    def __contains__(self, key: str) -> bool:
        return key in self.source

    def __iter__(self):
        return iter(self.source)

    def shape(self, key: str) -> tuple[int, ...]:
        source, part = self.source[key]
        shape = self.shapes[source]
        return shape if part is None else (shape[0] // 3, *shape[1:])

    # With copy=True the file is closed and reopened after this many bytes, so the pages of tensors already
    # copied leave RSS: the float32 vision side of Vary-toy (CLIP-L + SAM, 1.6 GB) otherwise peaked at twice that.
    COPY_MAPPED_BYTES = 128 * 2**20

    def take(self, keys: list[str], strip: str = "", copy: bool = False,
             dtype: torch.dtype | None = torch.float32) -> dict[str, Tensor]:  # fmt: skip
        """{key without `strip`: tensor}, floating ones in `dtype` (None: as stored); `copy`: tensors the model keeps."""
        from vary.modeling.official import take_part

        out = {}
        for path in dict.fromkeys(self.where[self.source[key][0]] for key in keys):
            pending = [key for key in keys if self.where[self.source[key][0]] == path]
            while pending:
                mapped = 0
                with safe_open(str(path), framework="pt") as handle:
                    while pending and (not copy or mapped < self.COPY_MAPPED_BYTES):
                        key = pending.pop(0)
                        source, part = self.source[key]
                        tensor = take_part(handle.get_tensor(source), part)
                        mapped += tensor.nbytes
                        target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
                        out[key.removeprefix(strip)] = tensor.to(target, copy=copy)
        return out

    # safetensors' dtype names -> torch (the float ones a matrix read in place may have)
    FILE_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}

    def location(self, key: str) -> tuple[Path, int, tuple[int, ...], torch.dtype] | None:
        """(file, byte offset, shape, dtype) of tensor `key` as stored, or None for a slice of a fused matrix or a
        dtype outside FILE_DTYPES."""
        source, part = self.source[key]
        path = self.where[source]
        # safetensors' documented layout (8-byte little-endian header length, a JSON header with each tensor's
        # dtype and data_offsets, then the data): the library does not expose offsets
        with open(path, "rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            entry = json.loads(handle.read(header_len))[source]
        if part is not None or entry["dtype"] not in self.FILE_DTYPES:
            return None
        return path, 8 + header_len + entry["data_offsets"][0], tuple(entry["shape"]), self.FILE_DTYPES[entry["dtype"]]


def open_checkpoint(path: Path, **overrides: Any):
    """(our config, LazyWeights under our key names, source name, strict) for a safetensors checkpoint folder of
    ours or a released layout (official Vary / GOT-OCR2, transformers' GotOcr2), or None for pickled (.bin)
    weights. `strict`: a released layout must hold exactly our tensors; our folders may hold extra ones."""
    from vary.config import VaryConfig
    from vary.modeling.got import hf_config_to_vary, hf_keys_to_vary, is_hf_got
    from vary.modeling.official import convert_keys, official_config, official_family, read_config, weight_files

    cfg = read_config(path)
    files = weight_files(path)
    if files[0].suffix != ".safetensors":
        return None
    weights = LazyWeights(files)
    if (family := official_family(cfg)) is not None:
        config = official_config(cfg, weights.meta_state_dict(), source=str(path), **overrides)
        weights.rename(convert_keys(weights.where, family))
        return config, weights, str(path), True
    if is_hf_got(cfg):
        config = hf_config_to_vary(cfg, path, **overrides)
        weights.rename({new: (key, None) for new, key in hf_keys_to_vary(weights.where).items()})
        return config, weights, str(path), True
    return VaryConfig.from_pretrained(path, **overrides), weights, str(path), False


def meta_model(config, weights: LazyWeights, source: str, strict: bool):
    """(a meta-device VaryForCausalLM of `config`, its state dict) after checking that `weights` has every tensor
    (a tied lm_head aside) at the right shape, and (strict) nothing else: CheckpointError naming the first."""
    from vary.modeling.official import CheckpointError
    from vary.modeling.vary import VaryForCausalLM

    with torch.device("meta"):
        model = VaryForCausalLM(config)
    expected = model.state_dict()
    head = _tied_head_name(model)
    missing = [k for k in expected if k not in weights and k != head]
    unexpected = [k for k in weights if k not in expected] if strict else []
    if missing and not strict:  # our own folders: the message of our float loading
        raise CheckpointError(f"{source}: incomplete checkpoint, {len(missing)} weight(s) missing (e.g. {missing[0]})"
                              " - they would be random; pass allow_missing=True only for a deliberate partial load")  # fmt: skip
    if missing or unexpected:
        raise CheckpointError(f"{source}: missing weights {missing[:5]}, unexpected weights {unexpected[:5]}")
    wrong = [k for k in expected if k in weights and weights.shape(k) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{source}: weight {k} has shape {weights.shape(k)}, expected {tuple(expected[k].shape)}")
    return model, expected


def weight_key(model: nn.Module, module: nn.Module) -> str:
    """The state-dict key of `module`'s weight inside `model`."""
    return next(name for name, candidate in model.named_modules() if candidate is module) + ".weight"


def _tied_head_name(model) -> str | None:
    """The lm_head weight's key when it is tied to the input embedding (checkpoints leave it out), else None."""
    return weight_key(model, model.get_output_embeddings()) if model.config.tie_word_embeddings else None


def check_all_loaded(model: nn.Module, source: str) -> None:
    """CheckpointError naming the parameters and buffers still on the meta device after a load."""
    from vary.modeling.official import CheckpointError

    left = [name for name, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if left:
        raise CheckpointError(f"{source}: weights not loaded: {left[:5]}")


def fill_buffers(model: nn.Module) -> None:
    """Buffers that checkpoints do not hold (rotary frequencies, position ids), still on the meta device:
    allocated and recomputed (buffers loaded from the checkpoint, e.g. BatchNorm statistics, are left alone)."""
    from vary.modeling.official import _reset_buffers

    for module in model.modules():
        meta = [name for name, buffer in module._buffers.items() if buffer is not None and buffer.is_meta]
        for name in meta:
            module._buffers[name] = torch.empty_like(module._buffers[name], device="cpu")
        if meta:
            _reset_buffers(module)


def load_float(path: Path, dtype: torch.dtype, **overrides: Any):
    """A safetensors checkpoint folder (ours or released) as a VaryForCausalLM in `dtype`, read tensor by tensor
    (LazyWeights.take closes the file every COPY_MAPPED_BYTES); None for pickled weights."""

    opened = open_checkpoint(path, **overrides)
    if opened is None:
        return None
    config, weights, source, strict = opened
    model, expected = meta_model(config, weights, source, strict)
    model.load_state_dict(weights.take([k for k in expected if k in weights], copy=True, dtype=dtype), strict=False,
                          assign=True)  # fmt: skip
    fill_buffers(model)  # float32, as transformers keeps them: bf16 rotary frequencies would blur far positions
    if _tied_head_name(model) is not None:
        model.language_model.tie_weights()
    check_all_loaded(model, source)
    parts = [model.config] + [getattr(model.config, f"{name}_config", None) for name in ("text", "vision", "clip")]
    for part in filter(None, parts):
        part.dtype = dtype  # as from_pretrained records it: the loaded dtype, not the file's
    if not strict:  # our folders: what from_pretrained also reads
        model.config.name_or_path = str(path)
        if (path / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(path)
    return model.eval()
