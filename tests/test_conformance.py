"""Parity with the official Vary implementation on every case folder in $VARY_CONFORMANCE_DIR.

Each case holds an official-format checkpoint, input images and ids, and the official outputs (see
../shared/conformance/README.md). We load the checkpoint through the official-checkpoint path, preprocess
the images with our processor, and must match hidden states and logits within 1e-3 and greedy ids exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests_paths import CONFORMANCE_DIR
from vary.modeling.official import load_official
from vary.modeling.processor import VaryProcessor

CASES = sorted(p for p in CONFORMANCE_DIR.glob("*") if (p / "case.json").is_file()) if CONFORMANCE_DIR.is_dir() else []
ATOL = 1e-3


def test_conformance_cases_present():
    assert CASES, f"no conformance cases found in {CONFORMANCE_DIR} (set VARY_CONFORMANCE_DIR)"


def _case_inputs(case_dir: Path, model) -> dict[str, torch.Tensor]:
    case = json.loads((case_dir / "case.json").read_text())
    processor = VaryProcessor(model.config, tokenizer=None)
    inputs = {"input_ids": torch.tensor([case["input_ids"]])}
    for file_name, prep in case["preprocess"].items():
        if prep.get("branch", "vision_vocabulary") == "clip":
            inputs["pixel_values_clip"] = processor.clip_tensor(case_dir / file_name)[None]
        else:
            inputs["pixel_values"] = processor.image_tensor(case_dir / file_name)[None]
    return inputs


def _load_case_model(case_dir: Path):
    case = json.loads((case_dir / "case.json").read_text())
    high = next(p for p in case["preprocess"].values() if p.get("branch", "vision_vocabulary") != "clip")
    overrides = dict(image_mean=high["mean"], image_std=high["std"])
    clip = next((p for p in case["preprocess"].values() if p.get("branch") == "clip"), None)
    if clip is not None:
        overrides |= dict(clip_image_mean=clip["mean"], clip_image_std=clip["std"])
    if "clip" in case:  # head count is the one size the weights cannot tell
        overrides["clip_num_attention_heads"] = case["clip"]["num_attention_heads"]
    model = load_official(case_dir / "checkpoint", **overrides)
    return case, model


@pytest.mark.parametrize("case_dir", CASES, ids=[p.name for p in CASES])
def test_official_parity(case_dir: Path):
    case, model = _load_case_model(case_dir)
    expected = load_file(case_dir / "expected.safetensors")
    vv = case["vision_vocabulary"]
    assert model.config.vision_config.hidden_size == vv["embed_dim"]
    assert list(model.config.vision_config.global_attn_indexes) == vv["global_attn_indexes"]
    assert model.config.vision_config.window_size == vv["window_size"]

    inputs = _case_inputs(case_dir, model)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    hidden = out.hidden_states[-1][0]
    torch.testing.assert_close(hidden, expected["last_hidden_state"], atol=ATOL, rtol=0)
    if "logits" in expected:
        torch.testing.assert_close(out.logits[0], expected["logits"], atol=ATOL, rtol=0)
    else:
        torch.testing.assert_close(out.logits[0, -8:], expected["logits_last8"], atol=ATOL, rtol=0)

    with torch.no_grad():
        generated = model.generate(
            **inputs, max_new_tokens=case["max_new_tokens"], min_new_tokens=case["max_new_tokens"],
            do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=0,
        )  # fmt: skip
    new_ids = generated[0, inputs["input_ids"].shape[1] :]
    assert new_ids.tolist() == expected["generated_ids"].tolist()
