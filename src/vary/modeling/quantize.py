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
The vision branches and projectors stay float32: they run once per page, compute-bound, on the fast path.

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

import warnings
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
def quantize_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per row: weight ~= q * scale[:, None]; q in [-127, 127]."""
    weight = weight.float()
    scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class QuantizedEmbedding(nn.Module):
    """An nn.Embedding stored as int8 rows + one float32 scale per row; looks up, then dequantizes those rows."""

    def __init__(self, weight: Tensor, padding_idx: int | None = None):
        super().__init__()
        q, scale = quantize_rows(weight)
        self.register_buffer("weight_int8", q)
        self.register_buffer("scale", scale)
        self.num_embeddings, self.embedding_dim = q.shape
        self.padding_idx = padding_idx

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.weight_int8[input_ids].float() * self.scale[input_ids, None]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"


def _quantize_dynamic(module: nn.Module) -> nn.Module:
    """Every nn.Linear inside `module` -> int8 dynamic Linear (per-output-channel scales), in place."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        # the torch.ao.quantization deprecation notice (see the module docstring): expected, nothing to act on
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return quantize_dynamic(module, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


def quantized_linear(weight: Tensor, bias: Tensor | None = None) -> nn.Module:
    """An int8 dynamic Linear computing x @ weight.T (+ bias); `weight` may be shared with an embedding."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.float(), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.float(), requires_grad=False)
    holder = nn.Sequential(linear)  # quantize_dynamic swaps children, not the module it is given
    return _quantize_dynamic(holder)[0]


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


def _quantize_embeddings(model, embedding_weight: Tensor, lm_head_weight: Tensor | None) -> None:
    """Input embedding -> QuantizedEmbedding; lm_head -> int8 Linear (from the embedding when they are tied)."""
    old_lm_head = model.get_output_embeddings()
    bias = getattr(old_lm_head, "bias", None)
    if bias is not None and bias.is_meta:
        raise ValueError("lm_head bias was not loaded")
    padding_idx = getattr(model.get_input_embeddings(), "padding_idx", None)
    model.set_output_embeddings(quantized_linear(embedding_weight if lm_head_weight is None else lm_head_weight, bias))
    model.set_input_embeddings(QuantizedEmbedding(embedding_weight, padding_idx))


def quantize_model_(model, method: str = "int8"):
    """Quantize a loaded float model in place (decoder Linears, lm_head, embedding); returns it.

    Peak memory is the float model: to load a checkpoint without that, use `load_quantized`.
    """
    _check_method(method)
    if is_quantized(model):
        return model
    model.float()
    tied = model.config.tie_word_embeddings
    embedding = model.get_input_embeddings().weight.detach()
    lm_head = None if tied else model.get_output_embeddings().weight.detach()
    _quantize_embeddings(model, embedding, lm_head)
    del embedding, lm_head
    for layer in decoder_layers(model)[1]:
        _quantize_dynamic(layer)
    return model.eval()


def _check_method(method: str) -> None:
    if method not in QUANTIZE_CHOICES:
        raise ValueError(f"unknown quantization {method!r}; choose one of {', '.join(QUANTIZE_CHOICES)}")


# --- lean loading ----------------------------------------------------------------------------------------
class _LazyWeights:
    """Tensors of safetensors files by name, read on demand (each read is a fresh float32 copy)."""

    def __init__(self, files: list[Path]):
        self._handles = [safe_open(str(path), framework="pt") for path in files]
        self.where = {key: handle for handle in self._handles for key in handle.keys()}  # noqa: SIM118

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def get(self, key: str) -> Tensor:
        return self.where[key].get_tensor(key).float()

    def take(self, keys: list[str], strip: str = "") -> dict[str, Tensor]:
        return {key.removeprefix(strip): self.get(key) for key in keys}


def load_quantized(path: str | Path, method: str = "int8", **overrides: Any):
    """Load a model folder with an int8 decoder without ever holding the float32 decoder in memory.

    Our folders (safetensors) are read tensor by tensor into a meta-device model, one decoder layer at a time.
    Official checkpoints are converted in float32 first (their key conversion needs the whole state dict),
    then quantized in place.
    """
    from vary.config import VaryConfig
    from vary.modeling.official import (
        CheckpointError,
        _reset_buffers,
        load_official,
        official_family,
        read_config,
        weight_files,
    )
    from vary.modeling.vary import VaryForCausalLM

    _check_method(method)
    path = Path(path)
    if official_family(read_config(path)) is not None:
        return quantize_model_(load_official(path, dtype=torch.float32, **overrides), method)
    files = weight_files(path)
    if files[0].suffix != ".safetensors":
        return quantize_model_(VaryForCausalLM.from_pretrained(path, dtype=torch.float32, **overrides), method)
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
    model.load_state_dict(weights.take(rest), strict=False, assign=True)
    for module in model.modules():  # buffers that are not in checkpoints (rotary frequencies): recomputed below
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.is_meta:
                module._buffers[name] = torch.empty_like(buffer, device="cpu")
    _reset_buffers(model)
    # 2. embedding + lm_head, int8 (the float32 matrices are freed on return)
    lm_head = None if tied or head_name not in weights else weights.get(head_name)
    _quantize_embeddings(model, weights.get(embed_name), lm_head)
    del lm_head
    # 3. decoder layers, one at a time
    for i, layer in enumerate(layers):
        layer_prefix = f"{prefix}.{i}."
        keys = [k for k in expected if k.startswith(layer_prefix)]
        layer.load_state_dict(weights.take(keys, strip=layer_prefix), strict=True, assign=True)
        _quantize_dynamic(layer)
    left = [name for name, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if left:
        raise CheckpointError(f"{path}: weights not loaded: {left[:5]}")
    return model.eval()
