"""Initialisation from local weight folders: SAM (official / transformers), OPT, CLIP, Vary-tiny (ours / official)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, OPTConfig, OPTForCausalLM

from test_train_data import TINY_MODEL
from vary.config import preset
from vary.modeling.tokenizer import train_bpe_tokenizer
from vary.modeling.vary import VaryForCausalLM
from vary.train.init import InitError, build_model, format_report
from vary.train.recipes import load_recipe

# A Vary-base (two branches, Qwen2 LM) at toy size: 16 tokens from each branch.
BASE_MODEL = dict(
    vision_config=TINY_MODEL["vision_config"], downsample_channels=[32, 64], image_token_len=16,
    clip_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                     patch_size=8),
    text_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                     intermediate_size=128, vocab_size=512, max_position_embeddings=512),
)  # fmt: skip

# transformers SamVisionEncoder names -> official SAM ImageEncoderViT names (inverse of the converter's rules)
TO_OFFICIAL_SAM = [
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^layers\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
    (r"^layers\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
    (r"^layers\.(\d+)\.", r"blocks.\1."),
    (r"^neck\.conv1\.", "neck.0."),
    (r"^neck\.layer_norm1\.", "neck.1."),
    (r"^neck\.conv2\.", "neck.2."),
    (r"^neck\.layer_norm2\.", "neck.3."),
]


def official_sam_names(encoder_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in encoder_state.items():
        for pattern, repl in TO_OFFICIAL_SAM:
            key, n = re.subn(pattern, repl, key)
            if n:
                break
        out[key] = value.clone()
    return out


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(["the page of text", "Provide the OCR results"] * 20, vocab_size=300)


def tiny_recipe(tmp_path, *overrides, base: bool = False, lm_from_folder: bool = False):
    model = BASE_MODEL if base else TINY_MODEL
    if lm_from_folder:  # the LM's sizes come from init.llm's config.json
        model = {k: v for k, v in model.items() if k != "text_config"}
    return load_recipe("vary-base-pretrain" if base else "nano",
                       [f"model.config={json.dumps(model)}", f"train.output_dir={tmp_path / 'run'}", *overrides])  # fmt: skip


def reference_tiny(seed: int = 1) -> VaryForCausalLM:
    torch.manual_seed(seed)
    return VaryForCausalLM(preset("nano", **TINY_MODEL))


def assert_same(model, reference, prefix: str) -> int:
    ours, theirs = model.state_dict(), reference.state_dict()
    keys = [k for k in theirs if k.startswith(prefix)]
    for key in keys:
        assert torch.equal(ours[key], theirs[key]), key
    return len(keys)


def test_from_scratch_reports_random_init(tmp_path, tokenizer):
    model, reports = build_model(tiny_recipe(tmp_path), tokenizer)
    assert [r.part for r in reports] == ["all"] and "from scratch" in format_report(reports)
    assert model.config.image_patch_token_id == tokenizer.convert_tokens_to_ids("<imgpad>")
    assert model.config.text_config.vocab_size >= len(tokenizer)


def test_official_sam_checkpoint_fills_the_encoder_and_reports_the_rest(tmp_path, tokenizer):
    ref = reference_tiny()
    encoder = {
        k[len("vision_vocab.encoder.") :]: v
        for k, v in ref.state_dict().items()
        if k.startswith("vision_vocab.encoder.")
    }
    state = {"image_encoder." + k: v for k, v in official_sam_names(encoder).items()}
    state |= {
        "prompt_encoder.point_embeddings.0.weight": torch.zeros(1, 4),
        "mask_decoder.iou_token.weight": torch.zeros(1, 4),
    }
    torch.save(state, tmp_path / "sam_vit_b.pth")
    model, reports = build_model(tiny_recipe(tmp_path, f"init.sam={tmp_path / 'sam_vit_b.pth'}"), tokenizer)
    (sam,) = reports
    n = assert_same(model, ref, "vision_vocab.encoder.")
    assert sam.loaded == n == len(encoder)
    assert sam.missing == ["vision_vocab.net_2.weight", "vision_vocab.net_3.weight"]  # new convs: random init
    assert sorted(sam.unexpected) == ["mask_decoder.iou_token.weight", "prompt_encoder.point_embeddings.0.weight"]
    assert "missing (random init): vision_vocab.net_2.weight, vision_vocab.net_3.weight" in format_report(reports)


def test_transformers_sam_folder_and_a_shape_mismatch(tmp_path, tokenizer):
    ref = reference_tiny()
    state = {"vision_encoder." + k[len("vision_vocab.encoder.") :]: v.clone()
             for k, v in ref.state_dict().items() if k.startswith("vision_vocab.encoder.")}  # fmt: skip
    folder = tmp_path / "sam-hf"
    folder.mkdir()
    save_file(state | {"shared_image_embedding.positional_embedding": torch.zeros(2, 2)}, folder / "model.safetensors")
    model, (sam,) = build_model(tiny_recipe(tmp_path, f"init.sam={folder}"), tokenizer)
    assert_same(model, ref, "vision_vocab.encoder.")
    assert sam.unexpected == ["shared_image_embedding.positional_embedding"]
    bigger = tiny_recipe(tmp_path, f"init.sam={folder}", "model.config.vision_config.hidden_size=128")
    with pytest.raises(
        InitError, match=r"sam-hf: weight vision_vocab\.encoder\.\S+ has shape \(64.*\) but the model.s is \(128"
    ):
        build_model(bigger, tokenizer)


def test_opt_folder_sets_the_lm_config_and_interpolates_positions(tmp_path, tokenizer):
    torch.manual_seed(2)
    opt = OPTForCausalLM(OPTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, ffn_dim=128,
                                   word_embed_proj_dim=64, vocab_size=320, max_position_embeddings=128))  # fmt: skip
    opt.save_pretrained(tmp_path / "opt")
    recipe = tiny_recipe(tmp_path, f"init.llm={tmp_path / 'opt'}", lm_from_folder=True)
    model, (llm,) = build_model(recipe, tokenizer)
    assert model.config.text_config.vocab_size == 320 and llm.unexpected == [] and llm.missing == []
    ours, theirs = model.language_model.state_dict(), opt.state_dict()
    for key, value in theirs.items():
        if "embed_positions" not in key:
            assert torch.equal(ours[key], value), key
    positions, original = ours["model.decoder.embed_positions.weight"], theirs["model.decoder.embed_positions.weight"]
    assert positions.shape[0] == 1026 and original.shape[0] == 130  # nano's 1024 vs the folder's 128, +2 offset
    assert torch.equal(positions[:2], original[:2]) and torch.allclose(positions[-1], original[-1])
    assert llm.resized and "interpolated" in llm.resized[0]


def test_vary_base_from_clip_folder_and_our_vary_tiny(tmp_path, tokenizer):
    torch.manual_seed(3)
    clip_vision = BASE_MODEL["clip_config"]
    clip = CLIPModel(CLIPConfig(vision_config=clip_vision, text_config=dict(hidden_size=32, intermediate_size=64,
                                num_hidden_layers=1, num_attention_heads=2, vocab_size=99), projection_dim=16))  # fmt: skip
    clip.save_pretrained(tmp_path / "clip")
    tiny = reference_tiny(seed=4)
    tiny.save_pretrained(tmp_path / "tiny")
    recipe = tiny_recipe(tmp_path, f"init.clip={tmp_path / 'clip'}", f"init.vary_tiny={tmp_path / 'tiny'}", base=True)
    model, reports = build_model(recipe, tokenizer)
    by_part = {r.part: r for r in reports}
    assert assert_same(model, tiny, "vision_vocab.") == by_part["vary_tiny"].loaded
    assert by_part["vary_tiny"].missing == [] and by_part["vary_tiny"].unexpected == []
    clip_state, ours = clip.vision_model.state_dict(), model.clip.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in clip_state.items())
    assert by_part["clip"].missing == [] and by_part["clip"].loaded == len(clip_state)
    assert (
        any(k.startswith("text_model.") for k in by_part["clip"].unexpected)
        and "logit_scale" in by_part["clip"].unexpected
    )


def test_official_vary_tiny_checkpoint_gives_the_vision_vocabulary(tmp_path, tokenizer):
    tiny = reference_tiny(seed=5)
    state = {}
    for key, value in tiny.state_dict().items():
        if key.startswith("vision_vocab.encoder."):
            name = next(iter(official_sam_names({key[len("vision_vocab.encoder.") :]: value})))
            state["model.vision_tower." + name] = value.clone()  # the pre-March-2024 prefix
        elif key.startswith("vision_vocab."):
            state["model.vision_tower." + key[len("vision_vocab.") :]] = value.clone()
    state["model.mm_projector.weight"] = torch.zeros(64, 64)
    folder = tmp_path / "official"
    folder.mkdir()
    save_file(state, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"architectures": ["varyOPTForCausalLM"], "model_type": "vary"}))
    recipe = tiny_recipe(tmp_path, f"init.vary_tiny={folder}", base=True)
    model, (part,) = build_model(recipe, tokenizer)
    assert part.loaded == assert_same(model, tiny, "vision_vocab.") and part.missing == []


def test_clip_folder_on_a_model_without_clip_is_an_error(tmp_path, tokenizer):
    with pytest.raises(InitError, match="has no CLIP branch"):
        build_model(tiny_recipe(tmp_path, f"init.clip={tmp_path}"), tokenizer)
