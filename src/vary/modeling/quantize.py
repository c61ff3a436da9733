"""Fewer bytes per weight for CPU decoding: int8 decoder weights, and native-bf16 detection.

Batch-1 decoding is memory-bound: every generated token streams all LM weights from memory (GOT-OCR2's Qwen2
decoder + 151,860 x 1,024 lm_head: ~1.9 GB in float32). `quantize="int8"` stores them as int8, a quarter of the
bytes:
- every nn.Linear of the decoder layers becomes a dynamically quantized Linear (int8 weights, one scale per
  output channel; activations stay float32 and are quantized per call by fbgemm, so prefill and decode both run
  integer GEMMs); in Qwen2 decoders q/k/v and gate/up are one int8 GEMM each (FusedInt8MLP);
- the lm_head matmul runs on an int8 copy of its weight (per-row scales), and the input embedding, which only
  looks rows up, dequantizes the int8 rows it reads (`QuantizedEmbedding`; after a safetensors load the rows are
  read from the file as they are looked up, `OnDiskEmbedding`). Keeping the embedding in float32 would cost
  622 MB for GOT-OCR2, 40% of a 1.5 GB budget, for a lookup of one row a token.
The vision branches and projectors run once per page and are compute-bound: they compute in float32, or in
bfloat16 where the caller asks (`vision_dtype`; worth it only on CPUs with native bf16, where it also halves
their activations and time). Either way their weights take no more bytes than the checkpoint gives them: the
family's 16-bit releases keep 16-bit vision weights, widened layer by layer for float32 compute (`_cast_vision`).

Why torch.ao's `quantize_dynamic` and not torchao: measured on 2 cores (Xeon, AVX-512 + AMX), 24 Linear layers
1024x2816 / 2816x1024, batch 1: float32 15.1 ms, torch.ao dynamic int8 2.2 ms, torchao 0.18
Int8DynamicActivationInt8Weight 10.0 ms, Int8WeightOnly 13.2 ms (torchao's CPU int8 paths are eager
tensor-subclass code unless torch.compile'd), and torchao prints load errors for its CUDA kernels on a CPU build.
torch.ao's quantized dynamic Linear is fbgemm's packed int8 GEMM. torch marks the torch.ao.quantization Python
API deprecated (pointing at torchao); the kernels it calls are the same `torch.ops.quantized` ops, so the
warning is silenced here, on purpose, around the one call that raises it.

Memory: `load_quantized` never holds a float32 copy of the whole decoder, for our folders and the released
layouts alike (their keys are renamed as they are read). It builds the model on the meta device, loads the
non-decoder weights, then the embedding (quantized, float32 freed), then one decoder layer at a time (loaded
in float32, quantized, float32 freed).

An int8 model is for inference: saving or exporting it is refused (`VaryForCausalLM.refuse_if_quantized`).
"""

from __future__ import annotations

import ctypes
import gc
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from torch.nn.utils import parametrize
from transformers.models.qwen2 import modeling_qwen2 as qwen2
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, Qwen2MLP

from vary.modeling.lazy_weights import (
    LazyWeights,
    check_all_loaded,
    fill_buffers,
    meta_model,
    open_checkpoint,
    weight_key,
)

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


class OnDiskEmbedding(nn.Module):
    """`QuantizedEmbedding`'s lookups, the rows read from the checkpoint file as they are looked up (os.pread).

    A tied int8 lm_head keeps the matrix once, packed for fbgemm's GEMM, which has no row lookup: a second int8
    copy for the input embedding costs 155 MB of RSS (GOT-OCR2; Vary-toy 311 MB) to read one row a token. Here
    no copy stays in memory: each looked-up row is read from the file and quantized as `quantize_rows` quantizes
    it, so the values are exactly QuantizedEmbedding's. The file is read through a descriptor held open, so
    deleting or atomically replacing it after the load is harmless; a file rewritten in place is refused.
    """

    def __init__(self, path: str | Path, offset: int, shape: tuple[int, int], file_dtype: torch.dtype,
                 padding_idx: int | None = None):  # fmt: skip
        super().__init__()
        self.path, self.offset, self.file_dtype, self.padding_idx = Path(path), offset, file_dtype, padding_idx
        self.num_embeddings, self.embedding_dim = shape
        self.row_bytes = self.embedding_dim * file_dtype.itemsize
        self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 - held for the module's lifetime
        self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple[int, int]:
        status = os.fstat(self._file.fileno())
        return status.st_size, status.st_mtime_ns

    def forward(self, input_ids: Tensor) -> Tensor:
        if self._file_stamp() != self._stamp:
            raise RuntimeError(f"{self.path} was rewritten after this int8 model was loaded from it: load it again")
        ids, inverse = torch.unique(input_ids, return_inverse=True)  # one read per distinct token
        if len(ids) and (int(ids[0]) < 0 or int(ids[-1]) >= self.num_embeddings):
            raise IndexError(f"token ids must lie in [0, {self.num_embeddings}): got {ids[0]}..{ids[-1]}")
        data = bytearray(len(ids) * self.row_bytes)
        for i, token in enumerate(ids.tolist()):
            data[i * self.row_bytes : (i + 1) * self.row_bytes] = os.pread(
                self._file.fileno(), self.row_bytes, self.offset + token * self.row_bytes
            )
        rows, scale = quantize_rows(torch.frombuffer(data, dtype=self.file_dtype).view(len(ids), -1))
        return (rows.float() * scale[:, None])[inverse]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows read from {self.path.name}"


class PackedInt8Linear(DynamicLinear):
    """torch.ao's dynamic int8 Linear, built without first packing a full-size placeholder weight.

    Its __init__ packs an empty out x in int8 matrix for fbgemm, which from_float / set_weight_bias then replace
    with the real one: half of all packing work (fbgemm's packing took 25 s of Vary-toy's 50 s int8 load). This one
    packs a 1 x 1 placeholder; every caller sets the real weight next. Same module otherwise (a subclass)."""

    def __init__(self, in_features: int, out_features: int, bias_: bool = True, dtype: torch.dtype = torch.qint8):
        super().__init__(1, 1, bias_=bias_, dtype=dtype)
        self.in_features, self.out_features = in_features, out_features


def int8_linear(rows: Tensor, scale: Tensor, bias: Tensor | None = None) -> nn.Module:
    """A dynamic int8 Linear (x @ W.T + bias) from int8 rows + per-row scales, as `quantize_dynamic` makes.

    Built from the rows directly rather than through an observer on a float Linear: the 151,860 x 1,024 lm_head
    then needs no float copy, and its int8 rows are the ones the embedding keeps (fbgemm packs its own copy).
    """
    out_features, in_features = rows.shape
    zero_points = torch.zeros(out_features, dtype=torch.long)
    with _torch_ao_deprecation_silenced():
        weight = torch._make_per_channel_quantized_tensor(rows, scale.double(), zero_points, 0)
    linear = PackedInt8Linear(in_features, out_features, bias_=bias is not None, dtype=torch.qint8)
    linear.set_weight_bias(weight, None if bias is None else bias.float().clone())
    return linear


def _fused_int8_linear(linears: list[nn.Linear]) -> nn.Module:
    """One dynamic int8 Linear computing several Linears of the same input (outputs concatenated). Quantized by
    the same observer as each of them (one scale per output row) and fed one quantized input, so its outputs are
    the separate int8 Linears' outputs."""
    weight = torch.cat([linear.weight.detach() for linear in linears])
    has_bias = linears[0].bias is not None
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if has_bias:
        fused.bias = nn.Parameter(torch.cat([linear.bias.detach() for linear in linears]), requires_grad=False)
    return _quantize_dynamic(nn.Sequential(fused))[0]  # quantize_dynamic swaps children, not the module passed


class FusedInt8MLP(nn.Module):
    """A gated MLP, down(act(gate(x)) * up(x)) (Qwen2, Llama), with gate and up as one int8 Linear.

    At batch-1 decoding each int8 Linear call has a fixed cost (quantizing the input, a parallel region), and
    a decode step of GOT-OCR2 makes 169 of them; fusing gate/up here and q/k/v in FusedQKVQwen2Attention makes
    it 97, and each GEMM reads a longer weight matrix in one pass.
    """

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.intermediate_size = mlp.gate_proj.out_features
        self.gate_up_proj = _fused_int8_linear([mlp.gate_proj, mlp.up_proj])
        self.down_proj = mlp.down_proj
        self.act_fn = mlp.act_fn

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


class FusedQKVQwen2Attention(Qwen2Attention):
    """transformers' Qwen2Attention with q/k/v as one int8 Linear (see FusedInt8MLP for why); rotary, cache and
    attention kernel are transformers'. Made from a loaded Qwen2Attention by `from_attention`."""

    @classmethod
    def from_attention(cls, attention: Qwen2Attention) -> FusedQKVQwen2Attention:
        projections = [attention.q_proj, attention.k_proj, attention.v_proj]
        attention.qkv_proj = _fused_int8_linear(projections)
        attention.qkv_sizes = [p.out_features for p in projections]
        del attention.q_proj, attention.k_proj, attention.v_proj
        attention.__class__ = cls  # the same module state; forward below reads qkv_proj
        return attention

    def forward(self, hidden_states, position_embeddings, attention_mask, cache=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        qkv = self.qkv_proj(hidden_states).split(self.qkv_sizes, dim=-1)
        q, k, v = (t.view(hidden_shape).transpose(1, 2) for t in qkv)
        q, k = qwen2.apply_rotary_pos_emb(q, k, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
            k, v = k.to(q.dtype), v.to(q.dtype)  # a bf16 key/value store: see _choose_kv_storage
        attend = qwen2.ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, qwen2.eager_attention_forward
        )
        out, weights = attend(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling,
                              sliding_window=self.sliding_window, **kwargs)  # fmt: skip
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights


def _quantize_layer(layer: nn.Module) -> nn.Module:
    """One decoder layer to int8, in place: Qwen2's q/k/v and gate/up fused (FusedInt8MLP), every other Linear
    a dynamic int8 Linear."""
    if type(getattr(layer, "self_attn", None)) is Qwen2Attention:
        FusedQKVQwen2Attention.from_attention(layer.self_attn)
    if type(getattr(layer, "mlp", None)) is Qwen2MLP:
        layer.mlp = FusedInt8MLP(layer.mlp)
    return _quantize_dynamic(layer)


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
        return quantize_dynamic(module, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
                                mapping={nn.Linear: PackedInt8Linear}, inplace=True)  # fmt: skip


def decoder_layers(model) -> tuple[str, nn.ModuleList]:
    """The decoder's ModuleList of layers and its name (OPT: ...decoder.layers, Qwen2/Llama: ...model.layers)."""
    for name, module in model.language_model.named_modules():
        if isinstance(module, nn.ModuleList) and name.endswith("layers") and len(module) > 0:
            return f"language_model.{name}", module
    raise ValueError("this model's language model has no decoder layer list to quantize")


def is_quantized(model) -> bool:
    return getattr(model, "quantized", None) is not None


def _quantize_embeddings(model, head_rows: tuple[Tensor, Tensor], embedding: nn.Module) -> None:
    """lm_head -> int8 Linear of `head_rows` (a tied model's: the embedding's rows); input embedding -> `embedding`
    (a QuantizedEmbedding or an OnDiskEmbedding)."""
    bias = getattr(model.get_output_embeddings(), "bias", None)
    if bias is not None and bias.is_meta:
        raise ValueError("lm_head bias was not loaded")
    model.set_output_embeddings(int8_linear(*head_rows, bias))
    model.set_input_embeddings(embedding)
    model.quantized = "int8"


def _padding_idx(model) -> int | None:
    return getattr(model.get_input_embeddings(), "padding_idx", None)


def _choose_kv_storage(model) -> None:
    """`model.kv_storage_dtype`, the dtype its decoding cache keeps keys and values in (vary.modeling.fast):
    bfloat16 for an int8 Qwen2 decoder, else None (the states' own dtype).

    Attention reads the whole cache at every token: at the end of a 1,024-token GOT-OCR2 page ~250 MB of
    float32 a token, and the largest part of the page's memory. bf16 halves both (that page: peak RSS 1.41 ->
    1.33 GB). Attention still runs in float32, on the states widened back (`fast.PreallocatedCache.attention_scratch`):
    no bf16 arithmetic, only conversions, so it pays on CPUs without bf16 instructions too (widening a bf16 store
    was faster than reading a float32 one with torch's AVX2 kernels as with its AVX-512 ones). Only int8: it
    already trades exactness for speed (the drift is of the order of int8's own), and only our int8 attention
    (FusedQKVQwen2Attention, fast.qwen2_decode_step) widens bf16 states to the query's dtype; other decoders'
    attention refuses mixed dtypes."""
    layers = decoder_layers(model)[1]
    fused = all(isinstance(getattr(layer, "self_attn", None), FusedQKVQwen2Attention) for layer in layers)
    model.kv_storage_dtype = torch.bfloat16 if fused else None


def quantize_model_(model, method: str = "int8", vision_dtype: torch.dtype = torch.float32):
    """Quantize a loaded float model in place (decoder Linears, lm_head, embedding); returns it.

    Peak memory is the float model: to load a checkpoint without that, use `load_quantized`.
    """
    _check_method(method, vision_dtype)
    if is_quantized(model):
        return model
    model.float()
    tied = model.config.tie_word_embeddings
    rows = quantize_rows(model.get_input_embeddings().weight.detach())
    head_rows = rows if tied else quantize_rows(model.get_output_embeddings().weight.detach())
    _quantize_embeddings(model, head_rows, QuantizedEmbedding(*rows, _padding_idx(model)))
    for layer in decoder_layers(model)[1]:
        _quantize_layer(layer)
    _cast_vision(model, vision_dtype)
    _choose_kv_storage(model)
    return model.eval()


def _check_method(method: str, vision_dtype: torch.dtype = torch.float32) -> None:
    if method not in QUANTIZE_CHOICES:
        raise ValueError(f"unknown quantization {method!r}; choose one of {', '.join(QUANTIZE_CHOICES)}")
    if vision_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"quantize={method!r} keeps float32 activations in the decoder; the vision branches run "
                         f"in float32 or bfloat16, not {vision_dtype}")  # fmt: skip


def _cast_vision(model, vision_dtype: torch.dtype, keep_16bit_weights: bool = False) -> None:
    """Everything but the language model (vision branches, projectors) to `vision_dtype`. encode_images feeds the
    vision branch in the projector's dtype and the splice casts its features to the LM's, so this is all it takes.

    `keep_16bit_weights` (float32 vision only): Linear and Conv2d weights that arrive in 16 bits (the family's
    releases are bf16 / fp16) stay so and are widened as each layer reads them (`_Widened`): the same float32
    values and arithmetic, for half the weight memory (GOT-OCR2's SAM: 182 MB less, Vary-toy's SAM + CLIP-L:
    790 MB less; widening cost Vary-toy ~0.5 s a page in an A/B, against 6 s of vision compute).
    """
    for name, child in model.named_children():
        if name == "language_model":
            continue
        kept = set()
        if keep_16bit_weights and vision_dtype == torch.float32:
            for module in child.modules():
                if isinstance(module, nn.Linear | nn.Conv2d) and module.weight.dtype in (torch.bfloat16, torch.float16):
                    parametrize.register_parametrization(module, "weight", _Widened(), unsafe=True)
                    kept.add(id(module.parametrizations.weight.original))
        # child.to() would widen the kept weights too: cast the others one by one
        for tensor in [*child.parameters(), *child.buffers()]:
            if tensor.is_floating_point() and id(tensor) not in kept:
                tensor.data = tensor.data.to(vision_dtype)


class _Widened(nn.Module):
    """A weight stored in 16 bits, read as float32 (a torch parametrization: `module.weight` is this output)."""

    def forward(self, stored: Tensor) -> Tensor:
        return stored.float()


# --- freed memory -----------------------------------------------------------------------------------------
# glibc's malloc gives a block above its mmap threshold its own mapping, returned to the OS on free, but it raises
# that threshold (up to 32 MB) each time such a block is freed; after that, the vision forward's tens-of-MB buffers
# come from the heap and stay resident once freed. Measured for GOT-OCR2 int8 on one thread: peak RSS over a page
# 1.87 GB by default, 1.68 GB with the threshold pinned at 256 KB; the decode step allocates almost nothing.
MMAP_THRESHOLD_BYTES = 256 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc malloc.h)


def return_freed_memory_to_os() -> bool:
    """Pin glibc's mmap threshold so that freed large tensors leave RSS; False where the C library is not glibc.

    Process-wide and cheap (an mmap/munmap per block above 256 KB); `load_quantized` calls it, since an int8
    model is chosen to keep memory low.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


# --- lean loading ----------------------------------------------------------------------------------------
def _on_disk_embedding(weights: LazyWeights, key: str, padding_idx: int | None) -> OnDiskEmbedding | None:
    """An OnDiskEmbedding of matrix `key`, or None where its rows cannot be read in place (a slice of a fused
    matrix, a dtype other than LazyWeights.FILE_DTYPES, or no os.pread)."""
    location = weights.location(key)
    if location is None or not hasattr(os, "pread"):  # pread: POSIX
        return None
    return OnDiskEmbedding(*location, padding_idx)


def _quantized_rows(weights: LazyWeights, key: str, chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """`quantize_rows` of a matrix, read `chunk` rows at a time: no float copy of the whole matrix."""
    source, part = weights.source[key]
    if part is not None:
        raise ValueError(f"{key} is part of the fused {source}: read it with take()")
    n_rows, n_cols = weights.shapes[source]
    rows, scale = torch.empty(n_rows, n_cols, dtype=torch.int8), torch.empty(n_rows)
    for start in range(0, n_rows, chunk):
        with safe_open(str(weights.where[source]), framework="pt") as handle:  # closed each time: see LazyWeights
            part_rows = handle.get_slice(source)[start : start + chunk]
        rows[start : start + chunk], scale[start : start + chunk] = quantize_rows(part_rows)
    return rows, scale


def load_quantized(path: str | Path, method: str = "int8", vision_dtype: torch.dtype = torch.float32, **overrides: Any):
    """Load a model folder with an int8 decoder without ever holding the float32 decoder in memory.

    safetensors checkpoints, ours or released (official GOT-OCR2 / Vary, transformers' GotOcr2), are read tensor
    by tensor into a meta-device model under our key names, one decoder layer at a time. Pickled (.bin)
    checkpoints cannot be read lazily: None (`vary.load_model(quantize=...)` loads them in float32, then
    quantizes them in place).
    """
    _check_method(method, vision_dtype)
    return_freed_memory_to_os()
    opened = open_checkpoint(Path(path), **overrides)
    if opened is None:
        return None
    with _collections_skip_older_objects():
        return _load_lean(*opened, vision_dtype)


@contextmanager
def _collections_skip_older_objects():
    """Let gc.collect() skip the objects alive before the load (gc.freeze): a full collection scans every tracked
    object, ~0.36 s a call in a process holding torch + transformers, and the lean load collects once a decoder
    layer (GOT-OCR2: 9 of 21 s). The load's own garbage is still collected (same peak RSS); left alone where the
    caller has frozen objects itself."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _load_lean(config, weights: LazyWeights, source: str, strict: bool, vision_dtype: torch.dtype):
    """Fill a meta-device VaryForCausalLM from `weights` piece by piece: the vision side (float32 or bf16 compute;
    16-bit checkpoint weights stay 16-bit, see `_cast_vision`), int8 embedding and lm_head read in row chunks,
    then one decoder layer at a time (read in float32, quantized, freed)."""
    model, expected = meta_model(config, weights, source, strict)
    prefix, layers = decoder_layers(model)
    embed_name = weight_key(model, model.get_input_embeddings())
    head_name = weight_key(model, model.get_output_embeddings())
    tied = config.tie_word_embeddings

    # 1. everything outside the decoder layers and the embedding/lm_head matrices: the language model's part
    # (final norm) in float32, the vision side as stored, then cast by _cast_vision
    rest = [k for k in expected if not k.startswith(prefix + ".") and k not in (embed_name, head_name)]
    lm_rest = [k for k in rest if k.startswith("language_model.")]
    model.load_state_dict(weights.take(lm_rest, copy=True), strict=False, assign=True)
    vision_side = [k for k in rest if k not in lm_rest]
    model.load_state_dict(weights.take(vision_side, copy=True, dtype=None), strict=False, assign=True)
    fill_buffers(model)
    _cast_vision(model, vision_dtype, keep_16bit_weights=True)
    # 2. embedding + lm_head, int8, read in row chunks. Lookups read the file (OnDiskEmbedding), so the embedding's
    # int8 rows are made only for a tied lm_head (which packs its own copy for fbgemm; the rows are then freed)
    embedding = _on_disk_embedding(weights, embed_name, _padding_idx(model))
    rows = _quantized_rows(weights, embed_name) if embedding is None or tied else None
    head_rows = rows if tied else _quantized_rows(weights, head_name)
    _quantize_embeddings(model, head_rows, embedding or QuantizedEmbedding(*rows, _padding_idx(model)))
    del rows, head_rows
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
        _quantize_layer(layer)
        gc.collect()
    check_all_loaded(model, source)
    _choose_kv_storage(model)
    return model.eval()
