"""Fewer bytes per weight for CPU decoding: int8 decoder weights, and native-bf16 detection.

Batch-1 decoding is memory-bound: every generated token streams all LM weights from memory (GOT-OCR2's Qwen2
decoder + 151,860 x 1,024 lm_head: ~1.9 GB in float32). `quantize="int8"` stores them as int8, a quarter of the
bytes:
- every nn.Linear of the decoder layers becomes a dynamically quantized Linear (int8 weights, one scale per
  output channel; activations stay float32 and are quantized per call by fbgemm, so prefill and decode both run
  integer GEMMs);
- the lm_head matmul runs on an int8 copy of its weight (per-row scales), and the input embedding, which only
  looks rows up, keeps int8 rows + scales and dequantizes the rows it reads (`QuantizedEmbedding`). Keeping the
  embedding in float32 would cost 622 MB for GOT-OCR2, 40% of a 1.5 GB budget, for a lookup of one row a token.
The vision branches and projectors run once per page and are compute-bound: they keep float32, or bfloat16
where the caller asks (`vision_dtype`; worth it only on CPUs with native bf16, where it also halves their
weights and activations, which is what keeps GOT-OCR2 int8 within ~1.5 GB).

Why torch.ao's `quantize_dynamic` and not torchao: measured on 2 cores (Xeon, AVX-512 + AMX), 24 Linear layers
1024x2816 / 2816x1024, batch 1: float32 15.1 ms, torch.ao dynamic int8 2.2 ms, torchao 0.18
Int8DynamicActivationInt8Weight 10.0 ms, Int8WeightOnly 13.2 ms (torchao's CPU int8 paths are eager
tensor-subclass code unless torch.compile'd), and torchao prints load errors for its CUDA kernels on a CPU build.
torch.ao's quantized dynamic Linear is fbgemm's packed int8 GEMM. torch marks the torch.ao.quantization Python
API deprecated (pointing at torchao); the kernels it calls are the same `torch.ops.quantized` ops, so the
warning is silenced here, on purpose, around the one call that raises it.

Memory: `load_quantized` never holds a float32 copy of the whole decoder. It builds the model on the meta
device, loads the non-decoder weights, then the embedding (quantized, float32 freed), then one decoder layer at
a time (loaded in float32, quantized, float32 freed).
"""

from __future__ import annotations

import gc
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn

QUANTIZE_CHOICES = ("int8",)


# --- bf16 detection --------------------------------------------------------------------------------------
def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (x86 "flags", arm "Features"); empty where it cannot be read."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    """True where bfloat16 matmuls run in hardware: AVX512_BF16 or AMX-BF16 (x86), BF16 (arm).

    Elsewhere oneDNN/ATen emulate bf16 and it is 15-30x slower than float32 (measured on an AVX2-only Xeon).
    """
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


# --- int8 modules ----------------------------------------------------------------------------------------
def quantize_rows(weight: Tensor, chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per row: weight ~= q * scale[:, None]; q in [-127, 127]. In row chunks, so a 151,860-row
    embedding needs no full-size float temporary."""
    q = torch.empty(weight.shape, dtype=torch.int8)
    scale = torch.empty(weight.shape[0])
    for start in range(0, weight.shape[0], chunk):
        rows = weight[start : start + chunk].float()
        scale[start : start + chunk] = rows.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        q[start : start + chunk] = torch.round(rows / scale[start : start + chunk, None]).clamp_(-127, 127)
    return q, scale


class QuantizedEmbedding(nn.Module):
    """An nn.Embedding stored as int8 rows + one float32 scale per row (see `quantize_rows`); looks rows up,
    then dequantizes only those."""

    def __init__(self, rows: Tensor, scale: Tensor, padding_idx: int | None = None):
        super().__init__()
        self.register_buffer("weight_int8", rows)
        self.register_buffer("scale", scale)
        self.num_embeddings, self.embedding_dim = rows.shape
        self.padding_idx = padding_idx

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.weight_int8[input_ids].float() * self.scale[input_ids, None]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"


def int8_linear(rows: Tensor, scale: Tensor, bias: Tensor | None = None) -> nn.Module:
    """A dynamic int8 Linear (x @ W.T + bias) from int8 rows + per-row scales, as `quantize_dynamic` makes.

    Built from the rows directly rather than through an observer on a float Linear: the 151,860 x 1,024 lm_head
    then needs no float copy, and its int8 rows are the ones the embedding keeps (fbgemm packs its own copy).
    """
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    out_features, in_features = rows.shape
    zero_points = torch.zeros(out_features, dtype=torch.long)
    with _torch_ao_deprecation_silenced():
        weight = torch._make_per_channel_quantized_tensor(rows, scale.double(), zero_points, 0)
    linear = DynamicLinear(in_features, out_features, bias_=bias is not None, dtype=torch.qint8)
    linear.set_weight_bias(weight, None if bias is None else bias.float().clone())
    return linear


@contextmanager
def _torch_ao_deprecation_silenced():
    """torch.ao.quantization's deprecation notices (see the module docstring): expected here, nothing to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
        yield


def _quantize_dynamic(module: nn.Module) -> nn.Module:
    """Every nn.Linear inside `module` -> int8 dynamic Linear (per-output-channel scales), in place."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with _torch_ao_deprecation_silenced():
        return quantize_dynamic(module, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


def decoder_layers(model) -> tuple[str, nn.ModuleList]:
    """The decoder's ModuleList of layers and its name (OPT: ...decoder.layers, Qwen2/Llama: ...model.layers)."""
    for name, module in model.language_model.named_modules():
        if isinstance(module, nn.ModuleList) and name.endswith("layers") and len(module) > 0:
            return f"language_model.{name}", module
    raise ValueError("this model's language model has no decoder layer list to quantize")


def _module_name(model: nn.Module, target: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is target)


def is_quantized(model) -> bool:
    return isinstance(model.get_input_embeddings(), QuantizedEmbedding)


def _quantize_embeddings(model, embedding_rows: tuple[Tensor, Tensor], lm_head_rows: tuple[Tensor, Tensor] | None):
    """Input embedding -> QuantizedEmbedding; lm_head -> int8 Linear (on the embedding's rows when tied)."""
    bias = getattr(model.get_output_embeddings(), "bias", None)
    if bias is not None and bias.is_meta:
        raise ValueError("lm_head bias was not loaded")
    padding_idx = getattr(model.get_input_embeddings(), "padding_idx", None)
    model.set_output_embeddings(int8_linear(*(lm_head_rows or embedding_rows), bias))
    model.set_input_embeddings(QuantizedEmbedding(*embedding_rows, padding_idx))


def quantize_model_(model, method: str = "int8", vision_dtype: torch.dtype = torch.float32):
    """Quantize a loaded float model in place (decoder Linears, lm_head, embedding); returns it.

    Peak memory is the float model: to load a checkpoint without that, use `load_quantized`.
    """
    _check_method(method, vision_dtype)
    if is_quantized(model):
        return model
    model.float()
    tied = model.config.tie_word_embeddings
    embedding = quantize_rows(model.get_input_embeddings().weight.detach())
    lm_head = None if tied else quantize_rows(model.get_output_embeddings().weight.detach())
    _quantize_embeddings(model, embedding, lm_head)
    for layer in decoder_layers(model)[1]:
        _quantize_dynamic(layer)
    _cast_vision(model, vision_dtype)
    return model.eval()


def _check_method(method: str, vision_dtype: torch.dtype = torch.float32) -> None:
    if method not in QUANTIZE_CHOICES:
        raise ValueError(f"unknown quantization {method!r}; choose one of {', '.join(QUANTIZE_CHOICES)}")
    if vision_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"quantize={method!r} keeps float32 activations in the decoder; the vision branches run "
                         f"in float32 or bfloat16, not {vision_dtype}")  # fmt: skip


def _cast_vision(model, vision_dtype: torch.dtype) -> None:
    """Everything but the language model (vision branches, projectors) to `vision_dtype`. encode_images feeds the
    vision branch in the projector's dtype and the splice casts its features to the LM's, so this is all it takes."""
    for name, child in model.named_children():
        if name != "language_model":
            child.to(vision_dtype)


# --- lean loading ----------------------------------------------------------------------------------------
class _LazyWeights:
    """Tensors of safetensors files by name, read on demand as float32.

    safetensors maps a file into memory and hands out views of it; every page read stays resident (and counted
    in RSS) until the mapping is released, i.e. until the file is closed and no view is alive. So each `take`
    closes the file again; tensors that the model keeps are copied out (`copy=True`), tensors that are only
    read to be quantized stay views, and their pages leave RSS with the mapping (copies of those would land in
    malloc's heap, which does not give freed memory back to the OS reliably).
    """

    def __init__(self, files: list[Path]):
        self.where = {}
        for path in files:
            with safe_open(str(path), framework="pt") as handle:
                self.where |= dict.fromkeys(handle.keys(), path)

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def take(self, keys: list[str], strip: str = "", copy: bool = False) -> dict[str, Tensor]:
        out = {}
        for path in dict.fromkeys(self.where[key] for key in keys):
            with safe_open(str(path), framework="pt") as handle:
                for key in keys:
                    if self.where[key] == path:
                        out[key.removeprefix(strip)] = handle.get_tensor(key).to(torch.float32, copy=copy)
        return out

    def quantized_rows(self, key: str, chunk: int = 8192) -> tuple[Tensor, Tensor]:
        """`quantize_rows` of a matrix, read `chunk` rows at a time: no float copy of the whole matrix."""
        with safe_open(str(self.where[key]), framework="pt") as handle:
            n_rows, n_cols = handle.get_slice(key).get_shape()
        rows, scale = torch.empty(n_rows, n_cols, dtype=torch.int8), torch.empty(n_rows)
        for start in range(0, n_rows, chunk):
            with safe_open(str(self.where[key]), framework="pt") as handle:  # closed each time: see the class doc
                part = handle.get_slice(key)[start : start + chunk]
            rows[start : start + chunk], scale[start : start + chunk] = quantize_rows(part)
        return rows, scale


def load_quantized(path: str | Path, method: str = "int8", vision_dtype: torch.dtype = torch.float32, **overrides: Any):
    """Load a model folder with an int8 decoder without ever holding the float32 decoder in memory.

    Our folders (safetensors) are read tensor by tensor into a meta-device model, one decoder layer at a time.
    Official checkpoints are converted in float32 first (their key conversion needs the whole state dict),
    then quantized in place.
    """
    from vary.config import VaryConfig
    from vary.modeling.got import is_hf_got, load_hf_got
    from vary.modeling.official import (
        CheckpointError,
        _reset_buffers,
        load_official,
        official_family,
        read_config,
        weight_files,
    )
    from vary.modeling.vary import VaryForCausalLM

    _check_method(method, vision_dtype)
    path = Path(path)
    config = read_config(path)
    if official_family(config) is not None:
        return quantize_model_(load_official(path, dtype=torch.float32, **overrides), method, vision_dtype)
    if is_hf_got(config):
        return quantize_model_(load_hf_got(path, dtype=torch.float32, **overrides), method, vision_dtype)
    files = weight_files(path)
    if files[0].suffix != ".safetensors":
        model = VaryForCausalLM.from_pretrained(path, dtype=torch.float32, **overrides)
        return quantize_model_(model, method, vision_dtype)
    config = VaryConfig.from_pretrained(path, **overrides)
    with torch.device("meta"):
        model = VaryForCausalLM(config)
    weights = _LazyWeights(files)
    prefix, layers = decoder_layers(model)
    embed_name = _module_name(model, model.get_input_embeddings()) + ".weight"
    head_name = _module_name(model, model.get_output_embeddings()) + ".weight"
    expected = list(model.state_dict())
    tied = config.tie_word_embeddings
    missing = [k for k in expected if k not in weights and not (tied and k == head_name)]
    if missing:
        raise CheckpointError(f"{path}: missing weights {missing[:5]}")

    # 1. everything outside the decoder layers and the embedding/lm_head matrices, in float32
    rest = [k for k in expected if not k.startswith(prefix + ".") and k not in (embed_name, head_name)]
    model.load_state_dict(weights.take(rest, copy=True), strict=False, assign=True)
    for module in model.modules():  # buffers that are not in checkpoints (rotary frequencies): recomputed below
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.is_meta:
                module._buffers[name] = torch.empty_like(buffer, device="cpu")
    _reset_buffers(model)
    _cast_vision(model, vision_dtype)
    # 2. embedding + lm_head, int8 (the float32 matrices are freed on return)
    lm_head = None if tied or head_name not in weights else weights.quantized_rows(head_name)
    _quantize_embeddings(model, weights.quantized_rows(embed_name), lm_head)
    gc.collect()  # the swapped-out float modules sit in reference cycles: free them (and their pages) now
    # 3. decoder layers, one at a time
    for i, layer in enumerate(layers):
        layer_prefix = f"{prefix}.{i}."
        keys = [k for k in expected if k.startswith(layer_prefix)]
        layer.load_state_dict(weights.take(keys, strip=layer_prefix), strict=True, assign=True)
        for module in layer.modules():  # what stays float (norms, biases) must not keep the file mapped
            for name, param in module.named_parameters(recurse=False):
                if not (isinstance(module, nn.Linear) and name == "weight"):
                    param.data = param.data.clone()
        _quantize_dynamic(layer)
        gc.collect()
    left = [name for name, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if left:
        raise CheckpointError(f"{path}: weights not loaded: {left[:5]}")
    return model.eval()
