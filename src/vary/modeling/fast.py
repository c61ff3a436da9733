"""Fast CPU inference for Vary: the same math as the transformers modules, less memory traffic.

Switched on by `VaryForCausalLM.enable_fast_cpu_path()`. The functions read the weights of the transformers
modules in place (nothing is copied or converted), so a model can switch paths at any time. CPU inference
only: with autograd, in training mode or on a GPU the plain transformers path runs.

Vision vocabulary (SAM ViTDet-B at 1024x1024, ~940 GFLOP). Where the plain path loses time and memory:
- Global-attention blocks (64x64 = 4096 tokens) materialise the decomposed relative-position bias as a
  (heads, 4096, 4096) float tensor (805 MB), then copy it once more. Here SDPA runs one head and 1024
  queries at a time; that chunk's bias (16 MB) is written into one reused buffer as SDPA's additive mask.
- The patch embedding leaves the token grid as a permuted (non-contiguous) view, so every LayerNorm,
  residual add and Linear afterwards copies or strides through memory. Here the residual stream is one
  contiguous (B*H*W, C) matrix from the start; residual adds are fused into the GEMMs (`addmm_`).
- Windowed blocks pad the grid (64 -> 70) before qkv and partition/unpartition with permute copies.
  Here qkv runs on the real tokens only (a padding token is zero after LayerNorm, so its qkv is the bias
  row), one `index_select` gathers the windows and one gathers the tokens back.
- The MLP runs in token chunks so its 4x-wide hidden state is one small reused buffer.
Measured and not kept: torch.compile of the plain encoder (30 s compile, still slower than this eager path),
FlexAttention on CPU (30 s compile, 20x slower), explicit softmax attention, q/k augmented with one-hot
position columns instead of a mask (3x the QK FLOPs), MKL-packed weights (<5%, +340 MB).

Decoding (batch 1) is memory-bound: every token streams all LM weights (~0.5 GB fp32 for OPT-125M). The
default DynamicCache also copies the whole key/value history at every token (`torch.cat`); PreallocatedCache
appends in place. A hand-written OPT decode step saved only ~7% more and was not kept. For Qwen2 decoders
(GOT-OCR2, Vary-toy) it is kept (`qwen2_decode_step`): with int8 weights a GOT-OCR2 token streams only ~0.46 GB,
and transformers' per-token Python and small-op work (masks, kwargs plumbing, 7-op RMSNorms, rotary per
layer: ~4,000 ops a token) took 15 of its 40 ms on 2 cores; the step here issues ~25 ops per layer, and runs
them as TorchScript (Python's cost per op was ~7 ms of the remaining ~35 ms: 28 -> 36 tok/s). A bf16 cache
(int8 Qwen2 decoders) is widened into reused float32 buffers for attention: CPU SDPA's bf16
kernel for one query was 7 of a token's 23 ms (PreallocatedCache.attention_scratch).
"""

from __future__ import annotations

import functools
import logging
import warnings
import weakref
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.activations import GELUActivation
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.qwen2.modeling_qwen2 import Qwen2ForCausalLM

logger = logging.getLogger(__name__)

# Queries per SDPA call (one head at a time) in global attention: the bias chunk is 1024 x 4096 floats = 16 MB
# for SAM-B. Measured on 2 cores: ~10% faster than all 12 heads per call, and faster than 256- or 4096-query chunks.
GLOBAL_QUERY_CHUNK = 1024
# Tokens per MLP chunk: a (1024, 3072) hidden state is 12.6 MB.
MLP_TOKEN_CHUNK = 1024


def fast_path_supported(module: torch.nn.Module, inputs: Tensor) -> bool:
    """The fast path is for CPU inference: no autograd, eval mode. GPUs keep the plain path (their kernels differ)."""
    return inputs.device.type == "cpu" and not torch.is_grad_enabled() and not module.training


# --- encoder ------------------------------------------------------------------------------------------------
def sam_encoder_forward(encoder, pixel_values: Tensor) -> Tensor:
    """transformers `SamVisionEncoder` forward: (B, 3, S, S) -> neck output (B, C_out, S/16, S/16).

    The result is a channels-last NCHW tensor (what the following convs prefer); values equal the plain path's.
    """
    batch = pixel_values.shape[0]
    x, (h, w) = _patch_embed(encoder, pixel_values)  # (B*h*w, C), contiguous
    for layer in encoder.layers:
        x = _vision_layer(layer, x, batch, h, w)
    return _neck(encoder.neck, x, batch, h, w)


def _patch_embed(encoder, pixel_values: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """Stride = kernel convolution as one GEMM over flattened patches, then + absolute position embedding."""
    proj = encoder.patch_embed.projection
    ph, pw = proj.kernel_size
    batch, channels, height, width = pixel_values.shape
    size = encoder.patch_embed.image_size
    if (height, width) != tuple(size) or channels != proj.in_channels:
        raise ValueError(
            f"pixel_values of shape {tuple(pixel_values.shape)} do not match the vision config "
            f"({proj.in_channels} channels, {size[0]}x{size[1]} pixels)"
        )
    h, w = height // ph, width // pw
    patches = pixel_values.reshape(batch, channels, h, ph, w, pw).permute(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(batch * h * w, channels * ph * pw)  # (B*h*w, 3*16*16): one copy
    x = F.linear(patches, proj.weight.reshape(proj.out_channels, -1), proj.bias)  # (B*h*w, C)
    if encoder.pos_embed is not None:
        x.view(batch, h, w, -1).add_(encoder.pos_embed)
    return x, (h, w)


def _vision_layer(layer, x: Tensor, batch: int, h: int, w: int) -> Tensor:
    """One SamVisionLayer; updates the residual stream `x` (B*h*w, C) in place and returns it."""
    attn = layer.attn
    y = F.layer_norm(x, x.shape[-1:], layer.layer_norm1.weight, layer.layer_norm1.bias, layer.layer_norm1.eps)
    if layer.window_size > 0:
        y = _window_attention(attn, y, batch, h, w, layer.window_size)
    else:
        y = _global_attention(attn, y, batch, h, w)
    x.addmm_(y, attn.proj.weight.t())  # x += attn_out @ W^T (GEMM with beta=1: no temporary)
    x.add_(attn.proj.bias)
    _mlp_(layer, x)
    return x


def _mlp_(layer, x: Tensor) -> None:
    """x += MLP(LayerNorm(x)), in token chunks so the 4x-wide hidden state is one small reused buffer."""
    ln, lin1, lin2, act = layer.layer_norm2, layer.mlp.lin1, layer.mlp.lin2, layer.mlp.act
    exact_gelu = isinstance(act, GELUActivation) and act.act is F.gelu  # transformers "gelu": erf GELU
    hidden = x.new_empty(min(MLP_TOKEN_CHUNK, x.shape[0]), lin1.out_features)
    w1, w2 = lin1.weight.t(), lin2.weight.t()  # read once: a 16-bit stored weight is widened at each read
    for start in range(0, x.shape[0], MLP_TOKEN_CHUNK):
        xs = x[start : start + MLP_TOKEN_CHUNK]  # contiguous row block: updated in place below
        y = F.layer_norm(xs, xs.shape[-1:], ln.weight, ln.bias, ln.eps)
        hs = hidden[: xs.shape[0]]
        torch.addmm(lin1.bias, y, w1, out=hs)
        if exact_gelu:
            torch.ops.aten.gelu_(hs)
        else:
            hs = act(hs)
        xs.addmm_(hs, w2)
        xs.add_(lin2.bias)


# --- attention ----------------------------------------------------------------------------------------------
def _split_qkv(attn, qkv: Tensor, n_seq: int, seq_len: int) -> tuple[Tensor, Tensor, Tensor]:
    """(n_seq*seq_len, 3C) -> q, k, v views of shape (n_seq, heads, seq_len, head_dim); no copy."""
    heads = attn.num_attention_heads
    qkv = qkv.view(n_seq, seq_len, 3, heads, -1).permute(2, 0, 3, 1, 4)
    return qkv.unbind(0)


def _rel_pos_terms(attn, q: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Decomposed relative-position terms of SAM (as `SamVisionAttention.get_decomposed_rel_pos`, unscaled q).

    q: (n, heads, h*w, D) -> rel_h (n, heads, h, w, h) and rel_w (n, heads, h, w, w); the bias of query
    (i, j) and key (ki, kj) is rel_h[..., i, j, ki] + rel_w[..., i, j, kj].
    """
    rel_pos_h = attn.get_rel_pos(h, h, attn.rel_pos_h)  # (h, h, D)
    rel_pos_w = attn.get_rel_pos(w, w, attn.rel_pos_w)  # (w, w, D)
    grid_q = q.unflatten(2, (h, w))  # (n, heads, h, w, D)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, rel_pos_h)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, rel_pos_w)
    return rel_h, rel_w


def _global_attention(attn, y: Tensor, batch: int, h: int, w: int) -> Tensor:
    """Attention over the whole h x w grid: (B*h*w, C) -> (B*h*w, C) before the output projection."""
    n_tok = h * w
    qkv = F.linear(y, attn.qkv.weight, attn.qkv.bias)  # (B*N, 3C)
    q, k, v = _split_qkv(attn, qkv, batch, n_tok)  # (B, heads, N, D) strided views
    if not attn.use_rel_pos:
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        return out.transpose(1, 2).reshape(batch * n_tok, -1)
    rel_h, rel_w = _rel_pos_terms(attn, q, h, w)  # (B, heads, h, w, h), (B, heads, h, w, w)
    rows = max(1, min(h, GLOBAL_QUERY_CHUNK // w))  # grid rows of queries per SDPA call
    bias_buffer = y.new_empty(batch * rows * w * n_tok)
    out = y.new_empty(batch, n_tok, attn.num_attention_heads, q.shape[-1])  # token-major, as the projection wants
    for head in range(attn.num_attention_heads):  # one head at a time: the bias chunk stays cache-sized
        hd = slice(head, head + 1)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            n_q = (r1 - r0) * w
            bias = bias_buffer[: batch * n_q * n_tok].view(batch, 1, r1 - r0, w, h, w)
            torch.add(rel_h[:, hd, r0:r1, :, :, None], rel_w[:, hd, r0:r1, :, None, :], out=bias)
            chunk = F.scaled_dot_product_attention(
                q[:, hd, r0 * w : r1 * w],
                k[:, hd],
                v[:, hd],
                attn_mask=bias.view(batch, 1, n_q, n_tok),
                scale=attn.scale,
            )  # (B, 1, n_q, D)
            out[:, r0 * w : r1 * w, hd] = chunk.transpose(1, 2)
    return out.view(batch * n_tok, -1)


@lru_cache(maxsize=16)
def _window_index(batch: int, h: int, w: int, size: int) -> tuple[Tensor, Tensor]:
    """Gather indices between the token grid and windows (as transformers' window_partition/unpartition).

    partition: for each window token (b, wi, wj, i, j), its row in the (B*h*w + 1) qkv matrix; padding
    positions point at the last row (the qkv of a zero token). unpartition: for each grid token, its row in
    the (windows * size^2) attention output.
    """
    nh, nw = -(-h // size), -(-w // size)
    b, wi, wj, i, j = torch.meshgrid(
        torch.arange(batch), torch.arange(nh), torch.arange(nw), torch.arange(size), torch.arange(size), indexing="ij"
    )
    gi, gj = wi * size + i, wj * size + j
    inside = (gi < h) & (gj < w)
    partition = torch.where(inside, (b * h + gi) * w + gj, batch * h * w).flatten()
    b, gi, gj = torch.meshgrid(torch.arange(batch), torch.arange(h), torch.arange(w), indexing="ij")
    unpartition = (((b * nh + gi // size) * nw + gj // size) * size + gi % size) * size + gj % size
    return partition, unpartition.flatten()


def _window_attention(attn, y: Tensor, batch: int, h: int, w: int, size: int) -> Tensor:
    """Attention inside size x size windows: (B*h*w, C) -> (B*h*w, C) before the output projection."""
    n_rows = y.shape[0]
    qkv = y.new_empty(n_rows + 1, attn.qkv.out_features)
    if attn.qkv.bias is None:
        torch.mm(y, attn.qkv.weight.t(), out=qkv[:n_rows])
        qkv[n_rows] = 0
    else:
        torch.addmm(attn.qkv.bias, y, attn.qkv.weight.t(), out=qkv[:n_rows])
        qkv[n_rows] = attn.qkv.bias  # a zero (padding) token's qkv
    partition, unpartition = _window_index(batch, h, w, size)
    n_win = partition.numel() // (size * size)
    windows = qkv.index_select(0, partition)  # (n_win * size^2, 3C)
    q, k, v = _split_qkv(attn, windows, n_win, size * size)  # (n_win, heads, size^2, D)
    mask = None
    if attn.use_rel_pos:
        rel_h, rel_w = _rel_pos_terms(attn, q, size, size)
        mask = q.new_empty(*rel_h.shape, size)  # contiguous, so that the view below is free
        torch.add(rel_h[..., :, None], rel_w[..., None, :], out=mask)
        mask = mask.view(n_win, q.shape[1], size * size, size * size)  # (n_win, heads, T, T)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)  # (n_win, heads, T, D)
    out = out.transpose(1, 2).reshape(n_win * size * size, -1)
    return out.index_select(0, unpartition)


# --- neck ---------------------------------------------------------------------------------------------------
def _neck(neck, x: Tensor, batch: int, h: int, w: int) -> Tensor:
    """1x1 conv -> LayerNorm2d -> 3x3 conv -> LayerNorm2d, channels-last throughout."""
    conv1, ln1, conv2, ln2 = neck.conv1, neck.layer_norm1, neck.conv2, neck.layer_norm2
    y = F.linear(x, conv1.weight.flatten(1), conv1.bias)  # 1x1 conv = Linear over channels
    y = F.layer_norm(y, y.shape[-1:], ln1.weight, ln1.bias, ln1.eps)
    y = y.view(batch, h, w, -1).permute(0, 3, 1, 2)  # NCHW view of channels-last memory
    y = F.conv2d(y, conv2.weight, conv2.bias, conv2.stride, conv2.padding, conv2.dilation, conv2.groups)
    y = y.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)  # (B, h, w, C) contiguous
    y = F.layer_norm(y, y.shape[-1:], ln2.weight, ln2.bias, ln2.eps)
    return y.permute(0, 3, 1, 2)


# --- decoding -----------------------------------------------------------------------------------------------
class PreallocatedLayer(DynamicLayer):
    """A DynamicLayer that appends into a preallocated buffer instead of `torch.cat` at every step.

    The default cache copies a layer's whole key/value history at each decoded token (24 copies of up to
    12 x 512 x 64 floats per token for OPT-125M on a page). Here new states are written at the end of a
    (B, heads, capacity, D) buffer, grown geometrically when full, and `keys`/`values` are views of its
    filled prefix, so attention still sees exactly the cached tokens (same values, same order).
    """

    initial_capacity = 256  # tokens; then doubled whenever full

    def __init__(self, storage_dtype: torch.dtype | None = None, **kwargs):
        super().__init__(**kwargs)
        self.storage_dtype = storage_dtype  # None: the states' own dtype (see PreallocatedCache)
        self._key_buffer: Tensor | None = None
        self._value_buffer: Tensor | None = None

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        old = self.get_seq_length()
        new = old + key_states.shape[-2]
        self._grow(new, key_states, value_states)
        self._key_buffer[:, :, old:new] = key_states
        self._value_buffer[:, :, old:new] = value_states
        self.set_length(new)
        return self.keys, self.values

    def reserve(self, length: int) -> tuple[Tensor, Tensor]:
        """The whole key and value buffers, grown to hold at least `length` tokens, for a writer that fills
        positions past the current length itself and then calls `set_length`."""
        self._grow(length, self.keys, self.values)
        return self._key_buffer, self._value_buffer

    def set_length(self, length: int) -> None:
        self.keys = self._key_buffer[:, :, :length]
        self.values = self._value_buffer[:, :, :length]

    def _grow(self, length: int, like_keys: Tensor, like_values: Tensor) -> None:
        """Own buffers with room for `length` tokens (`like_*`: batch, heads, head size and dtype to use)."""
        if not self._owns_states() or length > self._key_buffer.shape[-2]:
            self._reallocate(like_keys, like_values, max(length * 2, self.initial_capacity))

    def _owns_states(self) -> bool:
        """False when `keys` was replaced from outside (crop, beam reorder, batch select): rebuild the buffer."""
        if self._key_buffer is None:
            return False
        if self.keys.numel() == 0:
            return True
        return self.keys.data_ptr() == self._key_buffer.data_ptr() and self.keys.shape[:2] == self._key_buffer.shape[:2]

    def _reallocate(self, key_states: Tensor, value_states: Tensor, capacity: int) -> None:
        batch, heads = key_states.shape[:2]
        old = self.get_seq_length()
        dtype = self.storage_dtype or key_states.dtype
        self._key_buffer = key_states.new_empty(batch, heads, capacity, key_states.shape[-1], dtype=dtype)
        self._value_buffer = value_states.new_empty(batch, heads, capacity, value_states.shape[-1], dtype=dtype)
        if old:
            self._key_buffer[:, :, :old] = self.keys
            self._value_buffer[:, :, :old] = self.values
            self.set_length(old)  # drops the views of the old buffers, so they are freed now, one layer at a time

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        super().reset()


class PreallocatedCache(DynamicCache):
    """DynamicCache whose layers append in place (see `PreallocatedLayer`); for full-attention decoders.

    `storage_dtype` (e.g. bfloat16): keys and values are stored, and returned, in that dtype whatever the dtype
    of the states given; their attention must accept it (vary.modeling.quantize sets `model.kv_storage_dtype`
    where it does)."""

    def __init__(self, storage_dtype: torch.dtype | None = None):
        Cache.__init__(self, layer_class_to_replicate=functools.partial(PreallocatedLayer, storage_dtype=storage_dtype))
        self.decode_step: nn.Module | None = None  # set by qwen2_decode_step at this cache's first decoded token
        self._scratch: tuple[Tensor, Tensor] = (torch.empty(0), torch.empty(0))

    def reserve(self, length: int) -> tuple[list[Tensor], list[Tensor]]:
        """Every layer's key and value buffers, grown to hold `length` tokens (see PreallocatedLayer.reserve)."""
        buffers = [layer.reserve(length) for layer in self.layers]
        return [keys for keys, _ in buffers], [values for _, values in buffers]

    def set_length(self, length: int) -> None:
        for layer in self.layers:
            layer.set_length(length)

    def attention_scratch(self, key_buffer: Tensor, value_buffer: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Two `dtype` buffers shaped as a layer's key and value buffers (every layer's have one shape: `reserve`
        grows them together), reused by every layer and token, where the cache stores another dtype: a one-query
        attention reads a layer's bf16 states widened into them. Empty where the store is `dtype` already.

        Why not attend in bf16: CPU SDPA's bf16 kernel for one query ran 3-8x slower than float32 (AMD EPYC with
        avx512_bf16, 2 cores, GOT-OCR2 int8: 7 of a token's 23 ms at 300 cached tokens, 29 ms at 1,300); a fresh
        widened copy per layer pays page faults for its new allocation. Copying into these reused buffers costs
        about what reading a float32 store would, with half the store's memory (docs/cpu-speed.md)."""
        if key_buffer.dtype == dtype:
            return self._scratch  # empty: attention reads the store itself
        if self._scratch[0].shape != key_buffer.shape or self._scratch[0].dtype != dtype:
            self._scratch = (torch.empty(key_buffer.shape, dtype=dtype), torch.empty(value_buffer.shape, dtype=dtype))
        return self._scratch


def add_decoding_cache(model, generate_kwargs: dict) -> None:
    """Give `generate` a PreallocatedCache, unless the caller chose a cache or the LM has non-full-attention layers."""
    if any(generate_kwargs.get(name) is not None for name in ("cache", "past_key_values")):
        return
    generation_config = generate_kwargs.get("generation_config") or model.generation_config
    for source in (generate_kwargs, generation_config.to_dict()):
        if source.get("use_cache") is False or source.get("cache_implementation") is not None:
            return
    layer_types = getattr(model.config.text_config, "layer_types", None)
    if layer_types and any(kind != "full_attention" for kind in layer_types):
        return
    generate_kwargs["cache"] = PreallocatedCache(getattr(model, "kv_storage_dtype", None))


# Generation flags that ask for more than logits and the cache: the lean step below does not produce them.
_EXTRA_OUTPUTS = ("output_attentions", "output_hidden_states")


def lean_decoding_applies(language_model, inputs_embeds: Tensor, cache, attention_mask, labels, kwargs) -> bool:
    """Whether `qwen2_decode_step` can stand in for the transformers forward: a Qwen2 decoder with only
    full-attention layers, decoding one float32 token per row after a prefill into a PreallocatedCache, with no
    mask or a (batch, cached + 1) padding mask, no labels and no extra outputs requested."""
    if not isinstance(cache, PreallocatedCache):
        return False
    if inputs_embeds.shape[1] != 1 or inputs_embeds.dtype != torch.float32 or labels is not None:
        return False
    if not fast_path_supported(language_model, inputs_embeds) or any(kwargs.get(k) for k in _EXTRA_OUTPUTS):
        return False
    if not _full_attention_qwen2(language_model):
        return False
    if cache.get_seq_length() == 0 or len(cache.layers) != language_model.config.num_hidden_layers:
        return False
    expected = (inputs_embeds.shape[0], cache.get_seq_length() + 1)
    return attention_mask is None or (attention_mask.dim() == 2 and tuple(attention_mask.shape) == expected)


def qwen2_decode_step(language_model, inputs_embeds: Tensor, cache: PreallocatedCache,
                      position_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                      ) -> CausalLMOutputWithPast:  # fmt: skip
    """One decoding step of transformers' Qwen2ForCausalLM (B, 1, H) -> logits (B, 1, V), appending to `cache`;
    the same math as its forward in eval: a lone query attends to the whole cache, or to the positions a
    (B, cached + 1) padding mask keeps (left-padded batches: `generate` passes each row's position_ids).
    Works with the float Linears and with vary.modeling.quantize's fused int8 ones (`qkv_proj`, `gate_up_proj`)."""
    if cache.decode_step is None:  # the first decoded token of this cache
        cache.decode_step = decode_step_module(language_model)
    length = cache.get_seq_length()
    if position_ids is None:
        position_ids = torch.full((inputs_embeds.shape[0], 1), length, dtype=torch.long)
    cos, sin = language_model.model.rotary_emb(inputs_embeds, position_ids)  # (B, 1, D)
    half = cos.shape[-1] // 2
    # rotate_half(x) * sin == roll(x, D/2) * (sin with its first half negated): one roll instead of two slices,
    # a negation and a cat, per tensor and layer
    signed_sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)[:, :, None]
    keys, values = cache.reserve(length + 1)
    key_scratch, value_scratch = cache.attention_scratch(keys[0], values[0], inputs_embeds.dtype)
    keep = None if attention_mask is None or bool(attention_mask.all()) else attention_mask[:, None, None, :].bool()
    # TorchScript's default (profiling) executor spends its first two calls at ~7x the time of a step profiling
    # shapes for fusions that a CPU build does not make; the plain interpreter runs every call at full speed
    with torch.jit.optimized_execution(False):
        logits = cache.decode_step(
            inputs_embeds, cos[:, :, None], signed_sin, keys, values, key_scratch, value_scratch, keep, length
        )
    cache.set_length(length + 1)
    return CausalLMOutputWithPast(logits=logits, cache=cache)


class Qwen2LayerStep(nn.Module):
    """One Qwen2 decoder layer for one new token per row, written to run under TorchScript (see Qwen2DecodeStep).
    Reads the transformers layer's own modules and weights (nothing copied): q/k/v as three Linears or as the one
    fused int8 `qkv_proj` of vary.modeling.quantize, gate/up likewise (`gate_up_proj`)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        attn, mlp = layer.self_attn, layer.mlp
        for name in ("qkv_proj", "q_proj", "k_proj", "v_proj", "o_proj"):
            if hasattr(attn, name):
                setattr(self, name, getattr(attn, name))
        for name in ("gate_up_proj", "gate_proj", "up_proj", "down_proj", "act_fn"):
            if hasattr(mlp, name):
                setattr(self, name, getattr(mlp, name))
        self.input_norm, self.post_attention_norm = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
        self.eps = float(layer.input_layernorm.variance_epsilon)
        self.head_dim, self.scaling = int(attn.head_dim), float(attn.scaling)
        self.heads = int(attn.config.num_attention_heads)
        self.kv_heads = int(attn.config.num_key_value_heads)
        self.intermediate_size = int(mlp.intermediate_size)

    def forward(self, hidden: Tensor, cos: Tensor, signed_sin: Tensor, key_buffer: Tensor, value_buffer: Tensor,
                key_scratch: Tensor, value_scratch: Tensor, keep: Tensor | None, position: int) -> Tensor:  # fmt: skip
        batch, q_size, kv_size = hidden.shape[0], self.heads * self.head_dim, self.kv_heads * self.head_dim
        x = F.rms_norm(hidden, [hidden.shape[-1]], self.input_norm, self.eps)
        if hasattr(self, "qkv_proj"):
            qkv = self.qkv_proj(x)
            q, k, v = qkv[..., :q_size], qkv[..., q_size : q_size + kv_size], qkv[..., q_size + kv_size :]
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = self._rotate(q.view(batch, 1, self.heads, self.head_dim), cos, signed_sin).transpose(1, 2)
        k = self._rotate(k.view(batch, 1, self.kv_heads, self.head_dim), cos, signed_sin).transpose(1, 2)
        key_buffer[:, :, position : position + 1] = k  # cast to the store's dtype (bf16 for int8)
        value_buffer[:, :, position : position + 1] = v.view(batch, 1, self.kv_heads, self.head_dim).transpose(1, 2)
        keys, values = key_buffer[:, :, : position + 1], value_buffer[:, :, : position + 1]
        if keys.dtype != q.dtype:  # a bf16 store, widened into the reused buffers (PreallocatedCache.attention_scratch)
            keys = key_scratch[:, :, : position + 1].copy_(keys)
            values = value_scratch[:, :, : position + 1].copy_(values)
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=keep, scale=self.scaling, enable_gqa=self.kv_heads != self.heads
        )
        hidden = hidden + self.o_proj(out.transpose(1, 2).reshape(batch, 1, q_size))
        x = F.rms_norm(hidden, [hidden.shape[-1]], self.post_attention_norm, self.eps)
        if hasattr(self, "gate_up_proj"):
            gate_up = self.gate_up_proj(x)
            gate, up = gate_up[..., : self.intermediate_size], gate_up[..., self.intermediate_size :]
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return hidden + self.down_proj(self.act_fn(gate) * up)

    def _rotate(self, x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
        return torch.addcmul(x * cos, x.roll(self.head_dim // 2, -1), signed_sin)


class Qwen2DecodeStep(nn.Module):
    """All layers, the final norm and the LM head of one decoding step: (B, 1, H) -> logits (B, 1, V), writing
    each layer's new key/value at `position` of its cache buffer.

    Run as TorchScript where it compiles: a GOT-OCR2 int8 token is ~700 small ops around 97 int8 GEMMs, and
    Python's per-op cost was ~7 ms of its ~35 ms on 2 cores (measured: 28 -> 36 tok/s, the same tokens).
    TorchScript is deprecated in favour of torch.compile, but torch.compile breaks its graph at every fbgemm int8
    op (their packed weights cannot be traced) and ran slower than eager; TorchScript runs them natively."""

    def __init__(self, language_model: nn.Module):
        super().__init__()
        decoder = language_model.model
        self.layers = nn.ModuleList(Qwen2LayerStep(layer) for layer in decoder.layers)
        self.norm, self.eps = decoder.norm.weight, float(decoder.norm.variance_epsilon)
        self.lm_head = language_model.lm_head

    def forward(self, hidden: Tensor, cos: Tensor, signed_sin: Tensor, keys: list[Tensor], values: list[Tensor],
                key_scratch: Tensor, value_scratch: Tensor, keep: Tensor | None, position: int) -> Tensor:  # fmt: skip
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden, cos, signed_sin, keys[index], values[index], key_scratch, value_scratch, keep,
                           position)  # fmt: skip
        return self.lm_head(F.rms_norm(hidden, [hidden.shape[-1]], self.norm, self.eps))


# One step module per language model (~0.4 s to script GOT-OCR2's), with the fingerprint of the modules and weights
# it was built from; weak keys, so it goes with its model. It shares the model's weights (in-place updates reach
# it); a replaced module or tensor (quantization, a dtype change) changes the fingerprint and rebuilds it.
_decode_steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fingerprint(language_model: nn.Module) -> tuple:
    modules = tuple(id(module) for module in language_model.modules())
    return modules + tuple((tensor.data_ptr(), tensor.dtype) for tensor in language_model.parameters())


def prepare_lean_decoding(language_model: nn.Module) -> None:
    """Build a Qwen2 decoder's step module now (~0.4 s for GOT-OCR2), not at its first decoded token."""
    if _full_attention_qwen2(language_model):
        decode_step_module(language_model)


def _full_attention_qwen2(language_model: nn.Module) -> bool:
    """A Qwen2 decoder whose layers all attend to the whole cache: what the lean step computes."""
    return isinstance(language_model, Qwen2ForCausalLM) and all(
        kind == "full_attention" for kind in language_model.config.layer_types
    )


def decode_step_module(language_model: nn.Module) -> nn.Module:
    """The (scripted where possible) Qwen2DecodeStep of this language model, built now if it is missing or stale.
    Checked once per cache (each `generate`), not per token (see qwen2_decode_step)."""
    fingerprint = _fingerprint(language_model)
    built = _decode_steps.get(language_model)
    if built is not None and built[1] == fingerprint:
        return built[0]
    step = Qwen2DecodeStep(language_model).eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's notice: see Qwen2DecodeStep
            step = torch.jit.script(step)
    except Exception as error:  # a module TorchScript cannot compile: the same code, run by Python
        logger.warning("decoding without TorchScript (%s: %s)", type(error).__name__, str(error).split("\n")[0])
    _decode_steps[language_model] = (step, fingerprint)
    return step
