"""The converter places every key of the full-size official checkpoints (built on the meta device: no memory).

The key lists (every key and shape of the released Vary-tiny, Vary-base and GOT-OCR2 state dicts) are small
copies in tests/fixtures, so these run in any clone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests_paths import FIXTURES_DIR
from vary.modeling.official import convert_state_dict, official_config, official_family
from vary.modeling.vary import VaryForCausalLM

OPT_125M_CONFIG = {
    "architectures": ["varyOPTForCausalLM"], "model_type": "vary", "hidden_size": 768, "num_hidden_layers": 12,
    "num_attention_heads": 12, "ffn_dim": 3072, "word_embed_proj_dim": 768, "do_layer_norm_before": True,
    "activation_function": "relu", "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 2,
    "im_patch_token": 50265, "im_start_token": 50266, "im_end_token": 50267, "image_token_len": 256,
}  # fmt: skip
QWEN_7B_CONFIG = {
    "architectures": ["varyQwenForCausalLM"], "model_type": "mmgpt", "hidden_size": 4096, "num_hidden_layers": 32,
    "num_attention_heads": 32, "kv_channels": 128, "intermediate_size": 22016, "layer_norm_epsilon": 1e-6,
    "rotary_emb_base": 10000, "rotary_pct": 1.0, "max_position_embeddings": 8192, "vision_select_layer": -2,
}  # fmt: skip
# The released GOT-OCR2_0 config.json (Qwen2 fields; the vision sizes are hard-coded in its code).
GOT_CONFIG = {
    "architectures": ["GOTQwenForCausalLM"], "model_type": "GOT", "hidden_size": 1024, "intermediate_size": 2816,
    "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 151860,
    "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768, "tie_word_embeddings": True,
    "im_start_token": 151857, "im_end_token": 151858, "im_patch_token": 151859, "image_token_len": 256,
}  # fmt: skip


def _meta_state_dict(keys_file: Path) -> dict[str, torch.Tensor]:
    shapes = json.loads(keys_file.read_text())
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


@pytest.mark.parametrize(
    "keys_name, config",
    [
        ("vary_tiny_opt125m_official_keys.json", OPT_125M_CONFIG),
        ("vary_base_qwen7b_official_keys.json", QWEN_7B_CONFIG),
        ("got_ocr2_full_keys.json", GOT_CONFIG),
    ],
)
def test_every_official_key_has_a_place(keys_name, config):
    keys_file = FIXTURES_DIR / keys_name
    assert keys_file.is_file(), f"missing {keys_file}"
    official = _meta_state_dict(keys_file)
    ours_cfg = official_config(config, official, source=keys_name)
    converted = convert_state_dict(official, official_family(config))
    with torch.device("meta"):
        model = VaryForCausalLM(ours_cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in converted.items()}
    assert sorted(set(expected) - set(got)) == []  # no parameter of ours left uninitialised
    assert sorted(set(got) - set(expected)) == []  # no official key left over
    assert {k: got[k] for k in expected} == expected  # shapes equal
    # sizes read off the weights match the published architecture
    assert ours_cfg.vision_config.hidden_size == 768 and ours_cfg.vision_config.num_hidden_layers == 12
    assert list(ours_cfg.vision_config.global_attn_indexes) == [2, 5, 8, 11]
    assert ours_cfg.vision_config.window_size == 14 and ours_cfg.downsample_channels == [512, 1024]
    if ours_cfg.clip_config is not None:
        assert ours_cfg.clip_config.num_hidden_layers == 24 and ours_cfg.clip_config.num_attention_heads == 16
        assert ours_cfg.text_config.intermediate_size == 11008 and ours_cfg.projector_out_dim == 2048
    elif official_family(config) == "got":
        text = ours_cfg.text_config
        assert (text.hidden_size, text.num_hidden_layers, text.intermediate_size) == (1024, 24, 2816)
        assert text.num_key_value_heads == 16 and text.tie_word_embeddings and ours_cfg.projector_out_dim == 1024
        assert text.rope_parameters["rope_theta"] == 1e6 and ours_cfg.image_resample == "bicubic"
    else:
        assert ours_cfg.text_config.max_position_embeddings == 2048  # 2050 rows: stock OPT positions
