"""The fast CPU path (vary/modeling/fast.py) gives the plain transformers path's outputs on small configs.

Vision vocabulary within 1e-4 (windowed blocks with and without padding, global blocks, batches), greedy ids
identical, the append-in-place KV cache identical to transformers' DynamicCache, and the official conformance
cases still pass with the fast path on.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, OPTConfig

from conftest import tiny_config
from test_conformance import _case_inputs, _load_case_model, cases
from test_quantize import got_like_config, saved_model
from vary.modeling import fast
from vary.modeling.loading import load_model
from vary.modeling.quantize import is_quantized, quantize_model_
from vary.modeling.vary import VaryForCausalLM

ATOL = 1e-4


def _randomise_vision(model: VaryForCausalLM) -> None:
    """SAM initialises biases, norms and position embeddings to constants; make them matter, so that the test
    catches a wrong padding value, a swapped index or a dropped bias."""
    for name, param in model.vision_vocab.named_parameters():
        if param.dim() == 1 or "rel_pos" in name or "pos_embed" in name:
            torch.nn.init.normal_(param, mean=1.0 if "layer_norm" in name else 0.0, std=0.5)


def counted_calls(monkeypatch, name: str) -> list[int]:
    """Counts calls into vary.modeling.fast.<name>, so a silent fallback to the plain path fails the test."""
    calls: list[int] = []
    original = getattr(fast, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(fast, name, counted)
    return calls


@pytest.fixture
def fast_calls(monkeypatch) -> list[int]:
    """Calls into the fast encoder."""
    return counted_calls(monkeypatch, "sam_encoder_forward")


VISION_CASES = {
    # 16x16 grid, window 8: no padding; block 1 global.
    "windows_exact": dict(),
    # 16x16 grid, window 6: windows padded to 18x18, as SAM-B's 64 -> 70 at 1024 px; block 0 global.
    "windows_padded": dict(window_size=6, global_attn_indexes=[0]),
    # no relative positions, no qkv bias, no absolute positions
    "plain_attention": dict(window_size=5, use_rel_pos=False, qkv_bias=False, use_abs_pos=False),
}


@pytest.mark.parametrize("name", VISION_CASES)
def test_vision_vocabulary_fast_matches_plain(name, fast_calls):
    torch.manual_seed(0)
    config = tiny_config()
    for key, value in VISION_CASES[name].items():
        setattr(config.vision_config, key, value)
    model = VaryForCausalLM(config).eval()
    _randomise_vision(model)
    pixels = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        plain = model.vision_vocab(pixels)
        model.enable_fast_cpu_path()
        quick = model.vision_vocab(pixels)
    assert fast_calls, "the fast path was not used"
    assert quick.shape == plain.shape == (2, model.config.image_token_len, model.config.vision_feature_dim)
    torch.testing.assert_close(quick, plain, atol=ATOL, rtol=0)


def test_fast_path_keeps_autograd_and_training_on_the_plain_path(fast_calls):
    torch.manual_seed(0)
    model = VaryForCausalLM(tiny_config()).enable_fast_cpu_path()
    pixels = torch.randn(1, 3, 256, 256)
    model.eval()
    model.vision_vocab(pixels).sum().backward()  # grad enabled: plain path, gradients flow
    model.train()
    with torch.no_grad():
        model.vision_vocab(pixels)
    assert not fast_calls
    assert model.vision_vocab.encoder.patch_embed.projection.weight.grad is not None


def test_fast_path_logits_and_greedy_ids_match_plain(fast_calls):
    torch.manual_seed(0)
    model = VaryForCausalLM(tiny_config()).eval()
    _randomise_vision(model)
    cfg = model.config
    ids = torch.tensor([[1, cfg.image_start_token_id] + [cfg.image_patch_token_id] * 16 + [cfg.image_end_token_id, 9]])
    pixels = torch.randn(1, 3, 256, 256)
    kwargs = dict(max_new_tokens=24, min_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        plain_logits = model(input_ids=ids, pixel_values=pixels).logits
        plain_ids = model.generate(input_ids=ids, pixel_values=pixels, **kwargs)
        model.enable_fast_cpu_path()
        fast_logits = model(input_ids=ids, pixel_values=pixels).logits
        fast_out = model.generate(input_ids=ids, pixel_values=pixels, return_dict_in_generate=True, **kwargs)
    torch.testing.assert_close(fast_logits, plain_logits, atol=ATOL, rtol=0)
    assert isinstance(fast_out.cache, fast.PreallocatedCache)
    assert fast_out.sequences.tolist() == plain_ids.tolist()
    assert len(fast_calls) == 2


def test_preallocated_cache_matches_dynamic_cache(monkeypatch):
    """Growing past the buffer, beam search (reorders) and several sequences per prompt (batch repeat)."""
    monkeypatch.setattr(fast.PreallocatedLayer, "initial_capacity", 4)  # 5-token prompt: regrows at token 11
    torch.manual_seed(0)
    config = OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64, vocab_size=97,
                       word_embed_proj_dim=32, max_position_embeddings=128)  # fmt: skip
    lm = AutoModelForCausalLM.from_config(config).eval()
    prompt = torch.randint(3, 97, (2, 5))
    for kwargs in (dict(do_sample=False), dict(num_beams=2, num_return_sequences=2, do_sample=False)):
        kwargs |= dict(max_new_tokens=12, min_new_tokens=12, eos_token_id=None, pad_token_id=1)
        expected = lm.generate(prompt, **kwargs)
        got = lm.generate(prompt, cache=fast.PreallocatedCache(), **kwargs)
        assert got.tolist() == expected.tolist(), kwargs


def test_preallocated_cache_grows_for_a_writer_and_lets_the_old_buffers_go(monkeypatch):
    """reserve() hands out buffers with room for the new tokens and the history in place; the old buffers are no
    longer held once they are copied (24 layers' old buffers held until the step's end cost 0.2 GB of peak RSS on
    a GOT-OCR2 page); set_length() exposes what the writer filled."""
    monkeypatch.setattr(fast.PreallocatedLayer, "initial_capacity", 4)
    cache = fast.PreallocatedCache()
    history = [torch.randn(1, 2, 3, 8) for _ in range(4)]
    for index in range(2):
        cache.update(history[2 * index], history[2 * index + 1], index)  # capacity 6 each
    old = [weakref.ref(buffer) for layer in cache.layers for buffer in (layer._key_buffer, layer._value_buffer)]
    keys, values = cache.reserve(7)
    assert all(buffer() is None for buffer in old)  # freed: nothing holds them any more
    for index, layer in enumerate(cache.layers):
        assert keys[index].shape[2] >= 7 and keys[index] is layer._key_buffer
        assert layer.get_seq_length() == 3
        keys[index][:, :, 3:7] = 1.0
        values[index][:, :, 3:7] = 2.0
    cache.set_length(7)
    for index, layer in enumerate(cache.layers):
        torch.testing.assert_close(layer.keys[:, :, :3], history[2 * index], atol=0, rtol=0)
        assert layer.keys.shape[2] == 7 and bool((layer.values[:, :, 3:] == 2.0).all())
    assert cache.reserve(7)[0][0] is keys[0]  # room enough: the same buffers


def test_caller_cache_choice_is_respected():
    model = VaryForCausalLM(tiny_config()).eval()
    for kwargs in (dict(use_cache=False), dict(cache_implementation="static"), dict(cache="mine")):
        fast.add_decoding_cache(model, kwargs)
        assert not isinstance(kwargs.get("cache"), fast.PreallocatedCache), kwargs
    kwargs: dict = {}
    fast.add_decoding_cache(model, kwargs)
    assert isinstance(kwargs["cache"], fast.PreallocatedCache)


@pytest.mark.parametrize("case_dir", cases())
def test_official_parity_with_fast_path(case_dir, fast_calls):
    """The conformance suite (full 64x64 grid: padded 14x14 windows and a 4096-token global block), fast path on."""
    case, model = _load_case_model(case_dir)
    model.enable_fast_cpu_path()
    expected = load_file(case_dir / "expected.safetensors")
    inputs = _case_inputs(case_dir, case, model)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        generated = model.generate(
            **inputs, max_new_tokens=case["max_new_tokens"], min_new_tokens=case["max_new_tokens"],
            do_sample=False, eos_token_id=None, pad_token_id=0, suppress_tokens=case.get("suppressed_token_ids"),
        )  # fmt: skip
    assert fast_calls
    torch.testing.assert_close(out.hidden_states[-1][0], expected["last_hidden_state"], atol=1e-3, rtol=0)
    assert generated[0, inputs["input_ids"].shape[1] :].tolist() == expected["generated_ids"].tolist()


# --- the lean Qwen2 decoding step (GOT-OCR2, Vary-toy) -------------------------------------------------------
@pytest.fixture
def lean_steps(monkeypatch) -> list[int]:
    """Decoding steps taken by fast.qwen2_decode_step."""
    return counted_calls(monkeypatch, "qwen2_decode_step")


def _got_like(tmp_path, quantize=None):
    saved_model(tmp_path, got_like_config(tied=False), seed=5)  # 4 query heads over 2 key/value heads
    return load_model(tmp_path, quantize=quantize).eval()


@pytest.mark.parametrize("quantize", [None, "int8"], ids=["float32", "int8"])
def test_lean_qwen2_decoding_matches_transformers(tmp_path, quantize, lean_steps):
    """Greedy ids equal and per-step logits within float rounding of transformers' Qwen2 forward (int8: within
    activation-quantization rounding), past the preallocated cache's first regrowth, with the float Linears and
    with the fused int8 ones."""
    model = _got_like(tmp_path, quantize)
    model.kv_storage_dtype = None  # float32 keys/values, as transformers keeps them (bf16 ones: the test below)
    cfg = model.config
    ids = torch.tensor([[5, cfg.image_start_token_id] + [cfg.image_patch_token_id] * 16 + [cfg.image_end_token_id, 9]])
    pixels = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(6))
    _assert_lean_decodes_as_plain(model, lean_steps, 300, input_ids=ids, pixel_values=pixels)


def _assert_lean_decodes_as_plain(model, lean_steps, new_tokens: int, **inputs):
    """Generate with transformers' forward, then with the fast path: every token after the prefill takes the lean
    step, greedy ids are equal, per-step logits within float rounding (int8: within activation-quantization
    rounding: a float-rounding difference in an int8 Linear's input can move one int8 step). Returns the fast
    path's output, the fast path switched off again."""
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                  pad_token_id=0, output_logits=True, return_dict_in_generate=True)  # fmt: skip
    with torch.inference_mode():
        plain = model.generate(**inputs, **kwargs)
        assert not lean_steps
        model.enable_fast_cpu_path()
        lean = model.generate(**inputs, **kwargs)
    assert len(lean_steps) == new_tokens - 1
    assert lean.sequences.tolist() == plain.sequences.tolist()
    expected = torch.stack(plain.logits)
    atol = 0.05 * float(expected.std()) if is_quantized(model) else ATOL
    torch.testing.assert_close(torch.stack(lean.logits), expected, atol=atol, rtol=0)
    lean_steps.clear()
    model.enable_fast_cpu_path(False)
    return lean


def _greedy(model, steps=40):
    kwargs = dict(max_new_tokens=steps, min_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=0,
                  output_logits=True, return_dict_in_generate=True)  # fmt: skip
    with torch.inference_mode():
        out = model.generate(input_ids=torch.tensor([[5, 6, 7, 8, 9]]), **kwargs)
    return out.sequences, torch.stack(out.logits)


@pytest.mark.parametrize("quantize", [None, "int8"], ids=["float32", "int8"])
def test_decode_step_runs_as_torchscript_and_as_python_alike(tmp_path, quantize, monkeypatch, caplog):
    """The step is scripted when the fast path is switched on; where TorchScript fails, the same module runs
    in Python, with one warning, and decodes the same tokens with the same logits."""
    model = _got_like(tmp_path, quantize).enable_fast_cpu_path()
    step, _ = fast._decode_steps[model.language_model]  # built by enable_fast_cpu_path, before any token
    assert isinstance(step, torch.jit.ScriptModule)
    scripted = _greedy(model)

    def no_torchscript(module):
        raise RuntimeError("TorchScript cannot compile this\nsecond line")

    monkeypatch.setattr(torch.jit, "script", no_torchscript)
    del fast._decode_steps[model.language_model]
    with caplog.at_level("WARNING", logger="vary.modeling.fast"):
        python = _greedy(model)
    step, _ = fast._decode_steps[model.language_model]
    assert isinstance(step, fast.Qwen2DecodeStep) and not isinstance(step, torch.jit.ScriptModule)
    assert [r.getMessage() for r in caplog.records] == [
        "decoding without TorchScript (RuntimeError: TorchScript cannot compile this)"
    ]
    assert python[0].tolist() == scripted[0].tolist()
    torch.testing.assert_close(python[1], scripted[1], atol=1e-6, rtol=0)


def test_decode_step_follows_changed_weights_and_modules(tmp_path):
    """Weights changed in place reach the built step; a replaced module or tensor (quantization, a new
    Parameter) builds a new one. Each time the fast path decodes what the plain path does."""
    model = _got_like(tmp_path).enable_fast_cpu_path()

    def check_against_plain():
        fast_run = _greedy(model)
        model.enable_fast_cpu_path(False)
        plain = _greedy(model)
        model.enable_fast_cpu_path()
        assert fast_run[0].tolist() == plain[0].tolist()
        atol = 0.05 * float(plain[1].std()) if is_quantized(model) else ATOL
        torch.testing.assert_close(fast_run[1], plain[1], atol=atol, rtol=0)
        return fast._decode_steps[model.language_model][0]

    first = check_against_plain()
    with torch.no_grad():
        model.language_model.model.norm.weight.mul_(3.0)  # in place: the same step sees it
    assert check_against_plain() is first
    layer = model.language_model.model.layers[1].mlp
    layer.down_proj.weight = torch.nn.Parameter(torch.randn_like(layer.down_proj.weight) * 0.05)
    replaced = check_against_plain()
    assert replaced is not first
    quantize_model_(model)
    model.kv_storage_dtype = None  # float32 keys/values, as the plain path's comparison above
    assert check_against_plain() is not replaced


def test_lean_qwen2_decoding_leaves_extra_outputs_to_transformers(tmp_path, lean_steps):
    """Extra outputs need transformers' forward; the same prompt without them, and a batch, take the lean step."""
    model = _got_like(tmp_path).enable_fast_cpu_path()
    prompt = torch.tensor([[3, 4, 5, 6, 7]])
    kwargs = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.inference_mode():
        model.generate(input_ids=prompt, output_attentions=True, return_dict_in_generate=True, **kwargs)
        assert not lean_steps
        unpadded = model.generate(input_ids=prompt, **kwargs)
        assert len(lean_steps) == 5
        both = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 11, 12]])  # a batch without padding: the lean step
        batch = model.generate(input_ids=both, attention_mask=torch.ones_like(both), **kwargs)
        assert len(lean_steps) == 10
        model.enable_fast_cpu_path(False)
        assert model.generate(input_ids=prompt, **kwargs).tolist() == unpadded.tolist()
        assert model.generate(input_ids=both, attention_mask=torch.ones_like(both), **kwargs).tolist() == batch.tolist()


@pytest.mark.parametrize("quantize", [None, "int8"], ids=["float32", "int8"])
def test_lean_qwen2_decoding_of_left_padded_batches_matches_transformers(tmp_path, quantize, lean_steps):
    """A left-padded batch (as the server batches prompts of different lengths) takes the lean step, which masks
    each row's padding and rotates by its own positions: greedy ids equal and logits within rounding of
    transformers' forward (int8: within activation-quantization rounding, as the unpadded test) and, in float32,
    of each row decoded alone."""
    model = _got_like(tmp_path, quantize)
    model.kv_storage_dtype = None  # float32 keys/values, as transformers keeps them
    generator = torch.Generator().manual_seed(11)
    prompts = torch.randint(3, 1000, (3, 20), generator=generator)
    mask = torch.ones_like(prompts)
    mask[0, :7], mask[2, :12] = 0, 0  # rows 0 and 2 left-padded, row 1 full
    prompts = prompts.masked_fill(mask == 0, 0)
    batch = _assert_lean_decodes_as_plain(model, lean_steps, 40, input_ids=prompts, attention_mask=mask)
    if quantize is None:  # and each row as decoded alone (int8 quantizes a step's activations across its rows)
        for row in range(3):
            alone = _assert_lean_decodes_as_plain(
                model, lean_steps, 40, input_ids=prompts[row : row + 1, mask[row] == 1]
            )
            assert alone.sequences[0, -40:].tolist() == batch.sequences[row, -40:].tolist()
            torch.testing.assert_close(
                torch.stack(alone.logits)[:, 0], torch.stack(batch.logits)[:, row], atol=ATOL, rtol=0
            )


@pytest.mark.parametrize("native", [True, False])
def test_int8_qwen2_keeps_keys_and_values_in_bf16_on_every_cpu(tmp_path, monkeypatch, native):
    """bf16 keys/values for int8 Qwen2 decoders with or without native bf16 (no bf16 arithmetic: they are widened
    for attention); float decoders and OPT keep float32."""
    from vary.modeling import quantize as quantize_module

    monkeypatch.setattr(quantize_module, "cpu_has_native_bf16", lambda: native)
    int8 = _got_like(tmp_path, "int8").enable_fast_cpu_path()
    assert int8.kv_storage_dtype is torch.bfloat16
    with torch.inference_mode():
        out = int8.generate(input_ids=torch.tensor([[3, 4, 5]]), max_new_tokens=4, do_sample=False,
                            eos_token_id=None, pad_token_id=0, return_dict_in_generate=True)  # fmt: skip
    assert out.cache.layers[0].keys.dtype is torch.bfloat16
    assert not hasattr(_got_like(tmp_path), "kv_storage_dtype")  # float decoders: exact float32 caches
    opt_int8 = quantize_module.quantize_model_(VaryForCausalLM(tiny_config()))
    assert opt_int8.kv_storage_dtype is None  # OPT's attention takes one dtype


def test_lean_step_attends_to_a_bf16_store_in_float32(tmp_path, lean_steps):
    """With bf16 keys/values the lean step widens them and attends in float32: its logits are those of a float32
    store holding the same (bf16-rounded) values, and the query is not rounded to bf16 (that alone moves the
    logits ~40x more). The widened copies are two buffers reused by every layer and token."""
    model = _got_like(tmp_path).enable_fast_cpu_path()
    language_model = model.language_model
    generator = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        prefilled = fast.PreallocatedCache()
        language_model(input_ids=torch.randint(3, 1000, (1, 300), generator=generator), cache=prefilled)
        stores = {dtype: fast.PreallocatedCache(dtype) for dtype in (None, torch.bfloat16)}
        for index, layer in enumerate(prefilled.layers):
            for store in stores.values():
                store.update(layer.keys.bfloat16().float(), layer.values.bfloat16().float(), index)
        embeds = language_model.get_input_embeddings()(torch.randint(3, 1000, (1, 5), generator=generator))
        logits = {dtype: [] for dtype in stores}
        for dtype, store in stores.items():
            for token in range(5):
                step = fast.qwen2_decode_step(language_model, embeds[:, token : token + 1], store)
                logits[dtype].append(step.logits)
    assert len(lean_steps) == 10 and stores[torch.bfloat16].layers[0].keys.dtype is torch.bfloat16
    store = stores[torch.bfloat16]
    keys, values = store.reserve(store.get_seq_length())
    widened = store.attention_scratch(keys[0], values[0], torch.float32)
    assert widened[0].dtype is torch.float32
    assert [t.data_ptr() for t in widened] == [
        t.data_ptr() for t in store.attention_scratch(keys[1], values[1], torch.float32)
    ]
    expected = torch.cat(logits[None])
    # the new tokens' own keys/values are stored rounded in one store only: 1e-4 of the spread; a bf16 query 5e-3
    torch.testing.assert_close(torch.cat(logits[torch.bfloat16]), expected, atol=1e-3 * float(expected.std()), rtol=0)


def test_bf16_key_value_store_tracks_float32_through_cached_decoding(tmp_path, lean_steps):
    """The same int8 model decodes the same 200 tokens (teacher-forced, through the cache: prefill by our int8
    attention, then lean steps) with float32 and with bf16 keys/values: logits stay within a small fraction of
    their spread (int8 activation rounding amplifies any change: the drift is of the order of int8 against
    float32) and pick the same token almost everywhere."""
    model = _got_like(tmp_path, "int8").enable_fast_cpu_path()
    generator = torch.Generator().manual_seed(7)
    prompt, tokens = (
        torch.randint(3, 1000, (1, 24), generator=generator),
        torch.randint(3, 1000, (200,), generator=generator),
    )

    def decode(storage_dtype):
        cache = fast.PreallocatedCache(storage_dtype)
        with torch.inference_mode():
            logits = [model(input_ids=prompt, cache=cache, use_cache=True).logits[0, -1]]
            for token in tokens[:-1]:
                logits.append(model(input_ids=token.view(1, 1), cache=cache, use_cache=True).logits[0, -1])
        assert cache.layers[0].keys.dtype is (storage_dtype or torch.float32)
        return torch.stack(logits)

    exact, stored = decode(None), decode(torch.bfloat16)
    assert len(lean_steps) == 2 * 199
    drift, spread = (stored - exact).abs(), exact.std()
    # the budget test_quantize gives int8 itself against float32
    assert 0 < drift.max() < 0.25 * spread and drift.mean() < 0.05 * spread, (drift.max(), drift.mean(), spread)
    agreement = (stored.argmax(-1) == exact.argmax(-1)).float().mean()
    assert agreement >= 0.95, agreement
