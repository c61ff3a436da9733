"""Vary-toy (HaoranWei/Vary-toy): Vary-base's official layout with QWen-1.8B and two Linear(1024, 1024) projectors.

Its config.json is what the official `varyQwenForCausalLM.save_pretrained` writes: QWen-1.8B's fields plus the
ones `initialize_vision_modules` / `initialize_vision_tokenizer` set (Vary-toy repo, vary_toy_qwen1_8.py).
Folders are written here from tiny random weights in that key layout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import vary
from official_writers import to_official
from tests_paths import QWEN_TIKTOKEN
from vary.cli import app
from vary.config import CLIP_MEAN, IMAGENET_MEAN, preset
from vary.modeling.official import CheckpointError, convert_state_dict, official_config, official_family
from vary.modeling.vary import VaryForCausalLM

# QWen-1.8B's config.json fields + Vary's; sizes are replaced by the tiny ones where a test writes weights.
VARY_TOY_CONFIG = {
    "architectures": ["varyQwenForCausalLM"], "model_type": "vary", "hidden_size": 2048, "num_hidden_layers": 24,
    "num_attention_heads": 16, "kv_channels": 128, "intermediate_size": 11008, "layer_norm_epsilon": 1e-6,
    "rotary_emb_base": 10000, "rotary_pct": 1.0, "max_position_embeddings": 8192, "seq_length": 8192,
    "vocab_size": 151860, "no_bias": True, "use_dynamic_ntk": True, "use_logn_attn": True, "bf16": True,
    "tokenizer_class": "QWenTokenizer", "freeze_vision_tower": False, "image_token_len": 256,
    "use_im_start_end": True, "vision_select_layer": -2, "vision_tower": "/cache/vit-large-patch14/",
    "im_patch_token": 151859, "im_start_token": 151857, "im_end_token": 151858,
}  # fmt: skip


def tiny_toy_config():
    return preset(
        "vary-toy",
        vision_config=dict(image_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           window_size=8, global_attn_indexes=[1], output_channels=16),
        downsample_channels=[32, 64],
        clip_config=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                         image_size=56, patch_size=14),
        image_token_len=16,
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=151860),
    )  # fmt: skip


def write_vary_toy(folder: Path, seed: int = 0) -> VaryForCausalLM:
    torch.manual_seed(seed)
    model = VaryForCausalLM(tiny_toy_config()).eval()
    folder.mkdir(parents=True)
    save_file(to_official(model.state_dict(), "qwen"), folder / "model.safetensors", metadata={"format": "pt"})
    text = model.config.text_config
    config = VARY_TOY_CONFIG | dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, kv_channels=16,
                                    intermediate_size=2 * text.intermediate_size, image_token_len=16)  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    shutil.copy(QWEN_TIKTOKEN, folder / "qwen.tiktoken")
    return model


@pytest.fixture(scope="module")
def vary_toy(tmp_path_factory) -> tuple[Path, VaryForCausalLM]:
    folder = tmp_path_factory.mktemp("toy") / "Vary-toy"
    return folder, write_vary_toy(folder)


def _inputs(model, processor) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    c = model.config
    return dict(input_ids=torch.tensor([processor.prompt_ids("Provide the ocr results of this image.")]),
                pixel_values=torch.randn(1, 3, c.image_size, c.image_size),
                pixel_values_clip=torch.randn(1, 3, c.clip_image_size, c.clip_image_size))  # fmt: skip


def _greedy(model, inputs, n: int = 6) -> list[int]:
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0)  # fmt: skip
    return out[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.mark.slow  # CLIP + Qwen, generated and converted: ~14 s on 2 cores
def test_vary_toy_loads_generates_and_converts(vary_toy, tmp_path):
    folder, source = vary_toy
    model, processor = vary.load(folder)
    c = model.config
    assert c.clip_config.num_hidden_layers == 2 and c.projector_out_dim == 16 and c.template == "mpt"
    assert c.vision_select_layer == -2 and not c.tie_word_embeddings
    inputs = _inputs(model, processor)
    assert inputs["input_ids"][0].tolist().count(151859) == 16
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, source(**inputs).logits, atol=0, rtol=0)
    assert _greedy(model, inputs) == _greedy(source, inputs)

    result = CliRunner().invoke(app, ["convert", str(folder), str(tmp_path / "ours"), "--image-norm", "clip"])
    assert result.exit_code == 0, result.output
    converted, converted_processor = vary.load(tmp_path / "ours")
    assert tuple(converted.config.image_mean) == CLIP_MEAN and converted.config.image_resample == "bicubic"
    assert converted_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    with torch.no_grad():
        torch.testing.assert_close(converted(**inputs).logits, source(**inputs).logits, atol=0, rtol=0)


def test_vary_toy_refuses_incomplete_checkpoints(vary_toy, tmp_path):
    folder, _ = vary_toy
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    state = load_file(broken / "model.safetensors")
    del state["transformer.mm_projector.weight"]
    save_file(state, broken / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"projector_clip\.weight"):
        vary.load_model(broken)
    result = CliRunner().invoke(app, ["convert", str(broken), str(tmp_path / "out")])
    assert result.exit_code == 2 and "projector_clip.weight" in result.output and not (tmp_path / "out").exists()


def test_vary_toy_full_size_keys_complete():
    """Every key of the full-size layout (from the official code's modules) has a place; sizes and defaults right."""
    with torch.device("meta"):
        reference = VaryForCausalLM(preset("vary-toy", text_config=dict(vocab_size=151860)))
    official = to_official(reference.state_dict(), "qwen")
    assert official["transformer.mm_projector.weight"].shape == (1024, 1024)
    assert official["transformer.mm_projector_vary.weight"].shape == (1024, 1024)
    assert official["transformer.h.0.attn.c_attn.weight"].shape == (3 * 2048, 2048)
    config = official_config(VARY_TOY_CONFIG, official, source="Vary-toy")
    converted = convert_state_dict(official, official_family(VARY_TOY_CONFIG))
    with torch.device("meta"):
        model = VaryForCausalLM(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    text = config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.intermediate_size, text.vocab_size) == (
        2048,
        24,
        5504,
        151860,
    )
    assert config.clip_config.num_attention_heads == 16 and config.projector_out_dim == 1024
    # Vary-toy's demo preprocesses the high-res branch with CLIP's mean/std and bicubic resizing, Vary-base with
    # ImageNet's: the decoder (QWen-1.8B) is what tells the two apart.
    assert tuple(config.image_mean) == CLIP_MEAN and config.image_resample == "bicubic"
    chosen = official_config(VARY_TOY_CONFIG, official, source="Vary-toy", image_mean=IMAGENET_MEAN)
    assert tuple(chosen.image_mean) == IMAGENET_MEAN  # an explicit choice still wins
