"""GOT-OCR2 checkpoints: the official format (GOTQwenForCausalLM) and transformers' (GotOcr2ForConditionalGeneration).

Official folders are written here from tiny random weights in the released key layout (parity with the
official code itself is tests/test_conformance.py's job); transformers' GOT is built from a tiny random config
and compared with ours both ways: same pixels and ids in, logits within 1e-4 and the same greedy ids out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, AutoTokenizer, GotOcr2Config, GotOcr2ForConditionalGeneration
from typer.testing import CliRunner

import vary
from official_writers import to_official
from tests_paths import QWEN_TIKTOKEN
from vary.cli import app
from vary.config import IMAGENET_MEAN, IMAGENET_STD, preset
from vary.modeling.official import CheckpointError
from vary.modeling.vary import VaryForCausalLM


def got_config(vocab_size: int = 151860, **overrides):
    """GOT's shape at toy size: 256px -> 16 image tokens, 2 + 2 layers, 4 heads sharing 2 key/value heads."""
    specials = {} if vocab_size > 151643 else dict(bos_token_id=1, eos_token_id=1, pad_token_id=0)
    return preset(
        "got-ocr2",
        vision_config=dict(image_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           window_size=8, global_attn_indexes=[1], output_channels=16),
        downsample_channels=[32, 32],
        image_token_len=16,
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=vocab_size, **specials),
        **overrides,
    )  # fmt: skip


def write_official_got(folder: Path, seed: int = 0) -> VaryForCausalLM:
    """An official-format GOT folder (config.json, model.safetensors without the tied lm_head, qwen.tiktoken)."""
    torch.manual_seed(seed)
    model = VaryForCausalLM(got_config()).eval()
    state = to_official(model.state_dict(), "got", drop_tied_head=True)
    folder.mkdir(parents=True)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    text = model.config.text_config
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["GOTQwenForCausalLM"], "model_type": "GOT", "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size, "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads, "num_key_value_heads": text.num_key_value_heads,
        "vocab_size": text.vocab_size, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
        "max_position_embeddings": 32768, "im_start_token": 151857, "im_end_token": 151858,
        "im_patch_token": 151859, "image_token_len": 16, "use_im_start_end": True, "bos_token_id": 151643,
        "eos_token_id": 151643, "pad_token_id": 151643, "hidden_act": "silu",
    }))  # fmt: skip
    shutil.copy(QWEN_TIKTOKEN, folder / "qwen.tiktoken")
    return model


@pytest.fixture(scope="module")
def official_got(tmp_path_factory) -> tuple[Path, VaryForCausalLM]:
    folder = tmp_path_factory.mktemp("got") / "GOT-OCR2_0"
    return folder, write_official_got(folder)


def _prompt_inputs(processor, side: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return dict(input_ids=torch.tensor([processor.prompt_ids("OCR: ")]), pixel_values=torch.randn(1, 3, side, side))


def _greedy(model, inputs, n: int = 6) -> list[int]:
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0)  # fmt: skip
    return out[0, inputs["input_ids"].shape[1] :].tolist()


# --- official format ----------------------------------------------------------------------------------
def test_official_got_loads_with_its_tokenizer_and_generates(official_got):
    folder, source = official_got
    model, processor = vary.load(folder)
    c = model.config
    assert c.text_config.num_key_value_heads == 2 and c.text_config.num_attention_heads == 4
    assert c.tie_word_embeddings and model.language_model.lm_head.weight is model.get_input_embeddings().weight
    assert c.text_config.rope_parameters["rope_theta"] == 1e6 and c.template == "mpt" and c.prompt_style == "got"
    assert (c.image_resample, tuple(c.image_mean)) == ("bicubic", vary.config.CLIP_MEAN)
    assert len(processor.tokenizer) == 151860
    ids = processor.prompt_ids("OCR: ")
    assert ids[:3] == [151644, 8948, 198] and ids.count(151859) == 16  # <|im_start|>system\n ... 16 x <imgpad>
    inputs = _prompt_inputs(processor, c.image_size)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, source(**inputs).logits, atol=0, rtol=0)
    assert _greedy(model, inputs) == _greedy(source, inputs)


def test_official_got_converts_to_our_format(official_got, tmp_path):
    folder, source = official_got
    result = CliRunner().invoke(app, ["convert", str(folder), str(tmp_path / "ours")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "vary"
    model, processor = vary.load(tmp_path / "ours")
    inputs = _prompt_inputs(processor, model.config.image_size)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, source(**inputs).logits, atol=0, rtol=0)


def _broken_copy(folder: Path, dst: Path, drop: str | None = None, add: str | None = None) -> Path:
    shutil.copytree(folder, dst)
    state = load_file(dst / "model.safetensors")
    if drop:
        del state[drop]
    if add:
        state[add] = torch.zeros(3)
    save_file(state, dst / "model.safetensors")
    return dst


def test_official_got_refuses_incomplete_or_foreign_weights(official_got, tmp_path):
    folder, _ = official_got
    missing = _broken_copy(folder, tmp_path / "missing", drop="model.layers.1.mlp.up_proj.weight")
    with pytest.raises(CheckpointError, match=r"language_model\.model\.layers\.1\.mlp\.up_proj\.weight"):
        vary.load_model(missing)
    extra = _broken_copy(folder, tmp_path / "extra", add="model.vision_tower_high.extra_head.weight")
    with pytest.raises(CheckpointError, match=r"model\.vision_tower_high\.extra_head\.weight"):
        vary.load_model(extra)
    no_embeddings = _broken_copy(folder, tmp_path / "no_embeddings", drop="model.embed_tokens.weight")
    with pytest.raises(CheckpointError, match=r"model\.embed_tokens\.weight.*incomplete"):
        vary.load_model(no_embeddings)
    result = CliRunner().invoke(app, ["convert", str(missing), str(tmp_path / "out")])
    assert result.exit_code == 2 and "up_proj" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


# --- transformers' format -----------------------------------------------------------------------------
def tiny_hf_got(seed: int = 0, vocab_size: int = 300) -> GotOcr2ForConditionalGeneration:
    """A random transformers GOT, with its image token at the vocabulary's last id (not GOT's 151859)."""
    config = GotOcr2Config(
        vision_config=dict(image_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, window_size=8,
                           global_attn_indexes=[1], output_channels=16, mlp_dim=64),
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=vocab_size, tie_word_embeddings=True),
        image_token_index=vocab_size - 1, image_seq_length=16,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = GotOcr2ForConditionalGeneration(config).eval()
    with torch.no_grad():  # SAM initialises to ~1e-10: random weights so that every weight shows in the outputs
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def _image_inputs(image_token_id: int, side: int = 256, tokens: int = 16) -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    ids = [5, 6, image_token_id - 2] + [image_token_id] * tokens + [image_token_id - 1, 7, 8, 9]
    return dict(input_ids=torch.tensor([ids]), pixel_values=torch.randn(1, 3, side, side))


def _assert_same_outputs(ours, theirs, inputs):
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).logits, theirs(**inputs).logits, atol=1e-4, rtol=0)
    assert _greedy(ours, inputs) == _greedy(theirs, inputs)


@pytest.mark.parametrize("layout", ["on-disk", "in-memory"])
def test_hf_got_loads_into_vary(tmp_path, layout):
    hf = tiny_hf_got()
    hf.save_pretrained(tmp_path / "hf")  # on disk: language_model.model.*, vision_tower.*, multi_modal_projector.*
    assert "vision_tower.pos_embed" in load_file(tmp_path / "hf" / "model.safetensors")
    if layout == "in-memory":  # the module names of transformers 5 (model.language_model.*, ...), also accepted
        state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
        assert "model.vision_tower.pos_embed" in state
        save_file(state, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    ours = vary.load_model(tmp_path / "hf")
    c = ours.config
    assert (c.image_patch_token_id, c.image_start_token_id, c.image_end_token_id) == (299, 297, 298)
    assert (
        c.image_token_len == 16
        and c.prompt_style == "got"
        and c.tie_word_embeddings
        and c.text_config.num_key_value_heads == 2
    )
    _assert_same_outputs(ours, hf, _image_inputs(299))


def test_vary_exports_to_hf_got(tmp_path):
    torch.manual_seed(3)
    config = got_config(vocab_size=300, image_start_token_id=297, image_end_token_id=298, image_patch_token_id=299,
                        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, image_resample="bilinear")  # fmt: skip
    ours = VaryForCausalLM(config).eval()
    ours.save_pretrained(tmp_path / "ours")
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "ours"), str(tmp_path / "hf"), "--format", "hf"])
    assert result.exit_code == 0, result.output
    hf = GotOcr2ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.image_token_id == 299 and hf.lm_head.weight is hf.get_input_embeddings().weight
    _assert_same_outputs(ours, hf, _image_inputs(299))
    # and back: the exported folder loads into ours with the same weights
    back = vary.load_model(tmp_path / "hf")
    assert (tuple(back.config.image_mean), tuple(back.config.image_std)) == (IMAGENET_MEAN, IMAGENET_STD)
    assert back.config.image_resample == "bilinear"  # preprocessing travels in preprocessor_config.json
    for key, tensor in ours.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key


@pytest.mark.slow  # two Qwen tokenizers and a transformers GOT: ~15 s on 2 cores
def test_official_got_to_hf_keeps_the_tokenizer(official_got, tmp_path):
    folder, source = official_got
    result = CliRunner().invoke(app, ["convert", str(folder), str(tmp_path / "hf"), "--format", "hf"])
    assert result.exit_code == 0, result.output
    model, processor = vary.load(tmp_path / "hf")  # tokenizer.json now, not qwen.tiktoken
    _, official_processor = vary.load(folder)
    prompt = official_processor.prompt("OCR with format: 1 + 1 = 2 中文")
    expected = official_processor.tokenizer(prompt).input_ids
    assert processor.tokenizer(prompt).input_ids == expected
    assert AutoTokenizer.from_pretrained(tmp_path / "hf")(prompt).input_ids == expected  # transformers reads it too
    preprocessor = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert preprocessor["size"] == {"height": 256, "width": 256} and preprocessor["resample"] == 3  # PIL bicubic
    # transformers' image processor, configured by the export, preprocesses a page as ours does
    page = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 410, 3), dtype=np.uint8))
    theirs = AutoImageProcessor.from_pretrained(tmp_path / "hf")(page, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(processor.image_tensor(page)[None], theirs, atol=1e-6, rtol=0)
    inputs = _prompt_inputs(processor, model.config.image_size)
    hf = GotOcr2ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    _assert_same_outputs(source, hf, inputs)


def test_hf_export_refuses_shapes_transformers_cannot_hold(tmp_path, tiny_model_dir):
    result = CliRunner().invoke(app, ["convert", str(tiny_model_dir), str(tmp_path / "hf"), "--format", "hf"])
    assert result.exit_code == 2 and "cannot write as GotOcr2ForConditionalGeneration" in result.output
    assert "opt, not qwen2" in result.output and not (tmp_path / "hf").exists()
    result = CliRunner().invoke(app, ["convert", str(tiny_model_dir), str(tmp_path / "x"), "--format", "onnx"])
    assert result.exit_code == 2 and "format must be one of" in result.output
