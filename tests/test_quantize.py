"""int8 decoder weights (vary.modeling.quantize) and run-time bf16 detection, on small random models."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from typer.testing import CliRunner

from conftest import tiny_config
from test_infer_documents import make_png
from vary.cli import app
from vary.config import preset
from vary.infer import pipeline as pipeline_module
from vary.infer.pipeline import Pipeline, resolve_dtype
from vary.modeling import lazy_weights
from vary.modeling import quantize as quantize_module
from vary.modeling.loading import load_model
from vary.modeling.quantize import (
    FusedInt8MLP,
    FusedQKVQwen2Attention,
    OnDiskEmbedding,
    QuantizedEmbedding,
    cpu_flags,
    cpu_has_native_bf16,
    decoder_layers,
    load_quantized,
    quantize_model_,
    quantize_rows,
)
from vary.modeling.vary import VaryForCausalLM

pytestmark = pytest.mark.usefixtures("one_thread")

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16 amx_int8\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


def got_like_config(tied: bool = True):
    """A GOT-OCR2 shape (Qwen2 decoder, tied or not) at toy size, wide enough for int8 to be meaningful."""
    return preset(
        "got-ocr2",
        vision_config=dict(image_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                           window_size=8, global_attn_indexes=[1], output_channels=32),
        downsample_channels=[32, 64],
        image_token_len=16,
        text_config=dict(hidden_size=256, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=512, vocab_size=1024, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                         tie_word_embeddings=tied),
        image_start_token_id=1021, image_end_token_id=1022, image_patch_token_id=1023,
    )  # fmt: skip


def saved_model(folder, config, seed=0):
    torch.manual_seed(seed)
    model = VaryForCausalLM(config).eval()
    model.save_pretrained(folder)
    return model


# --- bf16 detection ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cpuinfo, native", [(AVX2_ONLY, False), (AVX512_BF16, True), (AMX, True), (ARM_BF16, True), ("", False)]
)
def test_native_bf16_detection_from_cpu_flags(cpuinfo, native):
    assert cpu_has_native_bf16(cpu_flags(cpuinfo)) is native


def test_auto_dtype_is_bf16_only_where_native(monkeypatch):
    monkeypatch.setattr(pipeline_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu") is torch.bfloat16
    assert resolve_dtype(None, "cpu") is torch.float32  # the default never changes a CPU's outputs
    monkeypatch.setattr(pipeline_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", "cpu") is torch.float32


# --- int8 --------------------------------------------------------------------------------------------------
def test_quantize_rows_round_trip():
    weight = torch.randn(64, 32) * torch.logspace(-3, 1, 64)[:, None]  # rows of very different scales
    q, scale = quantize_rows(weight)
    assert q.dtype is torch.int8 and int(q.abs().max()) == 127
    error = (q.float() * scale[:, None] - weight).abs()
    assert bool((error <= scale[:, None] / 2 + 1e-7).all())  # at most half a step per row


@pytest.mark.parametrize("tied", [True, False])
def test_lean_load_quantizes_every_decoder_linear_like_quantizing_the_float_model(tmp_path, tied, monkeypatch):
    """Layer-by-layer loading swaps every decoder Linear and the embeddings, and gives exactly the model that
    quantizing the whole float model in place gives."""
    saved_model(tmp_path, got_like_config(tied))
    pinned = []
    monkeypatch.setattr(quantize_module, "return_freed_memory_to_os", lambda: pinned.append(True))
    lean = load_model(tmp_path, quantize="int8")
    assert pinned  # the int8 load keeps freed buffers out of RSS (see the last test)
    _, layers = decoder_layers(lean)
    assert not any(type(m) is nn.Linear for m in layers.modules())  # every Linear swapped
    assert isinstance(lean.get_input_embeddings(), OnDiskEmbedding)
    assert isinstance(lean.get_output_embeddings(), DynamicLinear)
    assert sum(isinstance(m, DynamicLinear) for m in layers.modules()) == 4 * len(layers)  # qkv o gate_up down
    assert all(isinstance(layer.self_attn, FusedQKVQwen2Attention) for layer in layers)
    assert all(isinstance(layer.mlp, FusedInt8MLP) for layer in layers)
    assert not any(p.is_meta for p in [*lean.parameters(), *lean.buffers()])
    assert type(lean.projector_vary) is nn.Linear  # vision side stays float32
    in_place = quantize_model_(load_model(tmp_path))
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(lean(ids).logits, in_place(ids).logits)


@pytest.mark.parametrize("config", [got_like_config(), tiny_config(vocab_size=1024)], ids=["qwen2", "opt"])
def test_int8_tracks_float32_logits_and_greedy_tokens(tmp_path, config):
    """Logit drift stays small next to the logits, and int8 picks fp32's greedy token wherever fp32's margin
    (top-1 minus top-2) exceeds twice the drift. A wrong scale, layout or lost bias breaks both."""
    reference = saved_model(tmp_path, config, seed=1)
    quantized = load_quantized(tmp_path)
    prompt = torch.randint(3, 1000, (1, 8), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        sequence = reference.generate(input_ids=prompt, max_new_tokens=32, do_sample=False, eos_token_id=None,
                                      pad_token_id=0)  # fmt: skip
        expected = reference(sequence).logits[0]
        actual = quantized(sequence).logits[0]  # teacher-forced on fp32's tokens: every position compared
    drift = (actual - expected).abs()
    spread = expected.std()
    assert drift.max() < 0.25 * spread and drift.mean() < 0.05 * spread, (drift.max(), drift.mean(), spread)
    top2 = expected.topk(2, dim=-1).values
    confident = (top2[:, 0] - top2[:, 1]) > 2 * drift.max(dim=-1).values
    assert confident.sum() >= 4  # the check below has something to check
    assert torch.equal(actual.argmax(-1)[confident], expected.argmax(-1)[confident])
    agreement = (actual.argmax(-1) == expected.argmax(-1)).float().mean()
    assert agreement >= 0.8, agreement


def test_fused_qkv_and_gate_up_give_the_separate_int8_linears_outputs(tmp_path, monkeypatch):
    """Fusing q/k/v and gate/up into one int8 GEMM each changes the number of calls, not the result: the same
    checkpoint quantized one Linear at a time gives the same logits (prefill, then cached decoding)."""
    saved_model(tmp_path, got_like_config(), seed=3)
    fused = load_model(tmp_path, quantize="int8")
    monkeypatch.setattr(quantize_module, "_quantize_layer", quantize_module._quantize_dynamic)  # no fusion
    separate = load_model(tmp_path, quantize="int8")
    assert not any(isinstance(m, (FusedInt8MLP, FusedQKVQwen2Attention)) for m in separate.modules())
    ids = torch.randint(3, 1000, (1, 10), generator=torch.Generator().manual_seed(4))
    greedy = dict(max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0, output_logits=True,
                  return_dict_in_generate=True)  # fmt: skip
    with torch.inference_mode():
        assert torch.allclose(fused(ids).logits, separate(ids).logits, rtol=0, atol=1e-5)
        ours, theirs = fused.generate(input_ids=ids, **greedy), separate.generate(input_ids=ids, **greedy)
    assert torch.equal(ours.sequences, theirs.sequences)
    assert torch.allclose(torch.stack(ours.logits), torch.stack(theirs.logits), rtol=0, atol=1e-5)


def test_embedding_lookups_are_dequantized_rows_shared_with_the_tied_lm_head(tmp_path):
    """The int8 embedding returns exactly int8 row * row scale for the ids it is given (within half a step of the
    float32 row), and the tied lm_head multiplies by those same rows."""
    reference = saved_model(tmp_path, got_like_config(tied=True))
    model = quantize_model_(load_model(tmp_path))
    embedding = model.get_input_embeddings()
    assert isinstance(embedding, QuantizedEmbedding)  # in place: the rows stay in memory
    float_rows = reference.get_input_embeddings().weight.detach()
    ids = torch.tensor([[0, 5, 5, 1023], [7, 512, 3, 0]])
    looked_up = embedding(ids)
    assert looked_up.dtype is torch.float32 and looked_up.shape == (2, 4, 256)
    rows = embedding.weight_int8.float() * embedding.scale[:, None]
    assert torch.equal(looked_up, rows[ids])
    assert bool(((looked_up - float_rows[ids]).abs() <= embedding.scale[ids, None] / 2 + 1e-7).all())
    head_rows = model.get_output_embeddings().weight().dequantize()  # the Linear's int8 weight, dequantized
    assert torch.allclose(head_rows, rows, rtol=0, atol=1e-6)
    assert embedding.weight_int8.element_size() == 1 and embedding.num_embeddings == 1024


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_load_reads_embedding_rows_from_the_file(tmp_path, dtype):
    """The lean int8 load keeps no copy of the embedding matrix: lookups read the rows from the checkpoint and give
    exactly QuantizedEmbedding's values. Deleting the file after the load is harmless; rewriting it is refused."""
    saved_model(tmp_path / "model", got_like_config(tied=True)).to(dtype).save_pretrained(tmp_path / "model")
    in_memory = quantize_model_(load_model(tmp_path / "model")).get_input_embeddings()
    lean = load_model(tmp_path / "model", quantize="int8")
    embedding = lean.get_input_embeddings()
    assert isinstance(embedding, OnDiskEmbedding) and embedding.file_dtype == dtype
    assert not [t for t in [*embedding.parameters(), *embedding.buffers()] if t.numel() >= 1024]
    ids = torch.tensor([[0, 5, 5, 1023], [7, 512, 3, 0]])
    assert torch.equal(embedding(ids), in_memory(ids))
    with pytest.raises(IndexError, match=r"\[0, 1024\)"):
        embedding(torch.tensor([[3, 1024]]))
    moved = tmp_path / "moved"
    (tmp_path / "model").rename(moved)
    assert torch.equal(embedding(ids), in_memory(ids))  # the open descriptor still reads the same file
    file = moved / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-8] + b"\0" * 8)  # rewritten in place, same size
    os.utime(file, ns=(1, 1))
    with pytest.raises(RuntimeError, match="rewritten after this int8 model was loaded"):
        embedding(ids)


def test_packed_int8_linear_is_torch_aos_without_the_full_size_placeholder():
    """PackedInt8Linear packs a 1 x 1 placeholder (torch.ao's packs out x in), and once its weight is set computes
    exactly what torch.ao's dynamic Linear computes."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    assert quantize_module.PackedInt8Linear(512, 256)._packed_params._weight_bias()[0].shape == (1, 1)
    torch.manual_seed(0)
    float_linear = nn.Sequential(nn.Linear(64, 48))
    stock = quantize_dynamic(float_linear, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)[0]
    ours = quantize_module._quantize_dynamic(float_linear)[0]
    assert type(ours) is quantize_module.PackedInt8Linear and (ours.in_features, ours.out_features) == (64, 48)
    x = torch.randn(5, 64)
    assert torch.equal(ours(x), stock(x))


def test_the_lean_load_unfreezes_what_it_froze_and_leaves_a_callers_freeze(tmp_path):
    import gc

    saved_model(tmp_path, got_like_config())
    load_model(tmp_path, quantize="int8")
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        load_model(tmp_path, quantize="int8")
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_int8_model_refuses_to_save_in_one_line(tmp_path):
    from vary.modeling.got import export_hf_got

    saved_model(tmp_path / "float", got_like_config())
    model = load_model(tmp_path / "float", quantize="int8")
    for write in (model.save_pretrained, lambda dst: export_hf_got(model, dst)):
        with pytest.raises(ValueError, match=r"^cannot (save|export) an int8 model .*quantize it when loading$"):
            write(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_quantize_refuses_bad_combinations(tmp_path):
    saved_model(tmp_path, got_like_config())
    with pytest.raises(ValueError, match="unknown quantization 'int4'"):
        load_model(tmp_path, quantize="int4")
    with pytest.raises(ValueError, match="float32 or bfloat16, not torch.float16"):
        load_model(tmp_path, dtype=torch.float16, quantize="int8")


def test_pipeline_and_cli_run_int8(tiny_model_dir, tmp_path):
    pipe = Pipeline.from_pretrained(tiny_model_dir, quantize="int8", max_new_tokens=8)
    assert pipe.info()["quantized"] == "int8"
    assert pipe.ocr(make_png()).num_tokens > 0
    with pytest.raises(ValueError, match="float32 or bfloat16, not fp16"):
        Pipeline.from_pretrained(tiny_model_dir, quantize="int8", dtype="fp16")
    with pytest.raises(ValueError, match="for CPU inference"):
        Pipeline.from_pretrained(tiny_model_dir, quantize="int8", device="cuda")

    (tmp_path / "page.png").write_bytes(make_png())
    runner = CliRunner()
    common = ["ocr", str(tmp_path / "page.png"), "--model", str(tiny_model_dir), "--max-new-tokens", "8"]
    result = runner.invoke(app, [*common, "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*common, "--quantize", "int4"])
    assert result.exit_code == 2 and "int4" in result.output
    result = runner.invoke(app, [*common, "--quantize", "int8", "--dtype", "fp16"])
    assert result.exit_code == 1 and "error:" in result.output


@pytest.mark.slow  # two full loads of a GOT-shaped model: ~3 s on 2 cores
def test_int8_decoder_with_bf16_vision(tiny_model_dir):
    """--quantize int8 --dtype bf16: vision branch and projector in bf16, decoder int8 with float32 activations."""
    pipe = Pipeline.from_pretrained(tiny_model_dir, quantize="int8", dtype="bf16", max_new_tokens=8)
    model = pipe.model
    assert model.vision_vocab.encoder.patch_embed.projection.weight.dtype is torch.bfloat16
    assert model.projector_vary.weight.dtype is torch.bfloat16
    assert model.language_model.model.decoder.final_layer_norm.weight.dtype is torch.float32
    float_vision = Pipeline.from_pretrained(tiny_model_dir, quantize="int8", dtype="float32", max_new_tokens=8).model
    batch = pipe.processor([make_png()], "")
    with torch.inference_mode():
        bf16_logits = model(**batch).logits
        fp32_logits = float_vision(**batch).logits
    assert bf16_logits.dtype is torch.float32
    assert 0 < (bf16_logits - fp32_logits).abs().max() < 0.25 * fp32_logits.std()  # bf16 vision, same decoder
    assert pipe.ocr(make_png()).num_tokens > 0


@pytest.mark.parametrize("native", [True, False])
def test_int8_vision_dtype_defaults_to_bf16_where_native(tiny_model_dir, monkeypatch, native):
    monkeypatch.setattr(pipeline_module, "cpu_has_native_bf16", lambda: native)
    model = Pipeline.from_pretrained(tiny_model_dir, quantize="int8").model
    assert model.projector_vary.weight.dtype is (torch.bfloat16 if native else torch.float32)
    explicit = Pipeline.from_pretrained(tiny_model_dir, quantize="int8", dtype="float32").model
    assert explicit.projector_vary.weight.dtype is torch.float32


def test_serve_quantize_int8(tiny_model_dir, monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda asgi, **kwargs: calls.append(asgi))
    result = CliRunner().invoke(app, ["serve", "--model", str(tiny_model_dir), "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    assert calls[0].state.pipeline.info()["quantized"] == "int8"


@pytest.mark.parametrize("layout", ["official", "transformers"])
@pytest.mark.slow  # four loads, two Qwen tokenizers: ~3 s on 2 cores
def test_int8_loads_both_released_got_formats(tmp_path, layout):
    """`quantize="int8"` reads GOT-OCR2 as released (official remote-code layout, or transformers' GotOcr2):
    every decoder Linear int8, and the logits track the float32 load of the same folder."""
    from test_got import _image_inputs, tiny_hf_got, write_official_got
    from vary.modeling.quantize import is_quantized

    folder = tmp_path / layout
    if layout == "official":
        write_official_got(folder, seed=4)
        image_token = 151859
    else:
        tiny_hf_got(seed=4).save_pretrained(folder)
        image_token = 299
    reference, quantized = load_model(folder), load_model(folder, quantize="int8")
    assert is_quantized(quantized) and not is_quantized(reference)
    linears = [m for m in quantized.language_model.model.layers.modules() if isinstance(m, nn.Linear)]
    assert not linears, "a decoder Linear stayed float"
    inputs = _image_inputs(image_token, side=quantized.config.image_size, tokens=quantized.config.image_token_len)
    with torch.inference_mode():
        expected, actual = reference(**inputs).logits[0], quantized(**inputs).logits[0]
    drift = (actual - expected).abs()
    assert drift.max() < 0.25 * expected.std(), (drift.max(), expected.std())


def _released_folder(tmp_path, layout: str):
    """A tiny checkpoint folder in one of the released layouts (safetensors), and an input for it."""
    from test_got import _image_inputs, tiny_hf_got, write_official_got
    from test_vary_toy import write_vary_toy

    folder = tmp_path / layout
    if layout == "got-official":
        write_official_got(folder, seed=4)
        return folder, _image_inputs(151859)
    if layout == "got-transformers":
        tiny_hf_got(seed=4).save_pretrained(folder)
        return folder, _image_inputs(299)
    model = write_vary_toy(folder, seed=4)  # QWen v1 layout: q, k, v are slices of one fused c_attn matrix
    inputs = _image_inputs(model.config.image_patch_token_id)
    side = model.config.clip_image_size
    inputs["pixel_values_clip"] = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(3))
    return folder, inputs


@pytest.mark.parametrize("layout", ["got-official", "got-transformers", "vary-toy"])
def test_released_checkpoints_load_int8_layer_by_layer(tmp_path, layout, monkeypatch):
    """Released layouts are quantized while they are read, never through a float32 model: the float loaders are
    disabled during the int8 load, and the result equals quantizing the float32 load of the same folder."""
    from vary.modeling import got, loading, official

    folder, inputs = _released_folder(tmp_path, layout)
    in_place = quantize_model_(load_model(folder))

    def no_float_load(*args, **kwargs):
        raise AssertionError("the int8 load went through a float32 model")

    for module, name in [(official, "load_official"), (got, "load_hf_got"), (loading, "load_official"),
                         (loading, "load_hf_got"), (official, "load_state_dict")]:  # fmt: skip
        monkeypatch.setattr(module, name, no_float_load)
    lean = load_model(folder, quantize="int8")
    _, layers = decoder_layers(lean)
    assert not any(type(m) is nn.Linear for m in layers.modules())
    assert isinstance(lean.get_input_embeddings(), OnDiskEmbedding)
    with torch.inference_mode():
        assert torch.equal(lean(**inputs).logits, in_place(**inputs).logits)


@pytest.mark.parametrize("layout", ["got-official", "vary-toy"])
def test_float32_vision_keeps_16bit_checkpoint_weights_in_16_bits(tmp_path, layout):
    """The family's releases are 16-bit: an int8 load with float32 vision keeps their vision Linear / Conv2d weights
    in 16 bits, widened as each layer reads them, and computes exactly what the float32 load computes."""
    from safetensors.torch import load_file, save_file

    folder, inputs = _released_folder(tmp_path, layout)
    for file in folder.glob("*.safetensors"):
        save_file({k: v.to(torch.bfloat16) for k, v in load_file(file).items()}, file, metadata={"format": "pt"})
    reference = quantize_model_(load_model(folder))
    lean = load_model(folder, quantize="int8")
    vision = [m for name, child in lean.named_children() if name != "language_model" for m in child.modules()
              if isinstance(m, nn.Linear | nn.Conv2d)]  # fmt: skip
    assert len(vision) > 10
    assert all(m.parametrizations.weight.original.dtype == torch.bfloat16 for m in vision)
    assert all(m.weight.dtype == torch.float32 for m in vision) and lean.dtype == torch.float32
    with torch.inference_mode():
        assert torch.equal(lean(**inputs).logits, reference(**inputs).logits)
        for fast in (False, True):  # the fast CPU path reads the weights its own way
            lean.enable_fast_cpu_path(fast), reference.enable_fast_cpu_path(fast)
            assert torch.equal(lean.encode_images(**_pixels(inputs)), reference.encode_images(**_pixels(inputs)))


def _pixels(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k.startswith("pixel_values")}


def test_int8_load_of_released_checkpoints_is_strict(tmp_path):
    """A missing or foreign tensor in a released layout is an error naming it, as in the float32 load."""
    from safetensors.torch import load_file, save_file

    from test_got import write_official_got
    from vary.modeling.official import CheckpointError

    folder = tmp_path / "got"
    write_official_got(folder)
    state = load_file(folder / "model.safetensors")
    dropped, foreign = "model.layers.1.mlp.up_proj.weight", "model.vision_tower_high.extra.weight"
    for broken, named in [({k: v for k, v in state.items() if k != dropped}, r"layers\.1\.mlp\.up_proj\.weight"),
                          (state | {foreign: torch.zeros(3)}, r"vision_tower_high\.extra\.weight")]:  # fmt: skip
        save_file(broken, folder / "model.safetensors")
        with pytest.raises(CheckpointError, match=named):
            load_model(folder, quantize="int8")
    state["model.layers.1.mlp.up_proj.weight"] = state["model.layers.1.mlp.up_proj.weight"][:, :-1].contiguous()
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"up_proj\.weight has shape"):
        load_model(folder, quantize="int8")


MAPPED_BYTES_OF_A_4MB_TENSOR = """
import ctypes, sys, torch
from vary.modeling.quantize import return_freed_memory_to_os

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
mapped = lambda: libc.mallinfo2().hblkhd
if sys.argv[1] == "pinned":
    assert return_freed_memory_to_os()
block = torch.ones(4_000_000); del block  # freeing a 16 MB mapped block raises glibc's default threshold to 16 MB
before = mapped()
tensor = torch.ones(1_000_000)  # 4 MB: its own mapping only below the threshold
print((mapped() - before) / 1e6)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.slow  # two Python processes importing torch
def test_large_tensors_get_their_own_mapping_once_the_mmap_threshold_is_pinned():
    """What the int8 load switches on: a 4 MB tensor is its own mapping (given back to the OS when freed) even
    after glibc has raised its default threshold, under which it comes from the heap and stays resident."""

    def mapped_mb(mode):
        out = subprocess.run([sys.executable, "-c", MAPPED_BYTES_OF_A_4MB_TENSOR, mode], capture_output=True,
                             text=True, check=True)  # fmt: skip
        return float(out.stdout.split()[-1])

    assert mapped_mb("pinned") >= 4.0
    assert mapped_mb("default") == 0.0  # glibc's own behaviour, which the pinning prevents


def test_copied_reads_reopen_the_file_as_they_go(tmp_path, monkeypatch):
    """take(copy=True) closes the file after COPY_MAPPED_BYTES, so copied tensors' pages leave RSS; same tensors."""
    saved_model(tmp_path, got_like_config())
    weights = lazy_weights.LazyWeights(sorted(tmp_path.glob("*.safetensors")))
    keys = [key for key in weights if key.startswith("vision_vocab.")]
    whole = weights.take(keys, copy=True)
    opened = []
    real_open = lazy_weights.safe_open
    monkeypatch.setattr(
        lazy_weights, "safe_open", lambda *args, **kwargs: opened.append(1) or real_open(*args, **kwargs)
    )
    monkeypatch.setattr(lazy_weights.LazyWeights, "COPY_MAPPED_BYTES", 1)
    parts = weights.take(keys, copy=True)
    assert len(keys) > 10 and len(opened) == len(keys)  # one tensor per opening
    assert parts.keys() == whole.keys() and all(torch.equal(parts[k], whole[k]) for k in keys)
