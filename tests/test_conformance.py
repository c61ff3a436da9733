"""Parity with the official Vary and GOT-OCR2 implementations on every conformance case.

Each case holds an official-format checkpoint, input images and ids, and the official outputs (see
../shared/conformance/README.md). We load the checkpoint through the official-checkpoint path, preprocess
the images with our processor, and must match pixels within 1e-6, features, hidden states and logits within
1e-3, and greedy ids exactly. Everything (sizes, preprocessing, token ids) is read from the case and the
checkpoint, so a case of another shape is checked the same way.

Cases come from two places: tests/fixtures/conformance (the small official Vary-tiny case, so every clone
tests parity) and $VARY_CONFORMANCE_DIR or ../shared/conformance (all cases; skipped when absent).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests_paths import CONFORMANCE_DIR, FIXTURES_DIR, QWEN_TIKTOKEN, conformance_cases
from vary.modeling.official import load_official
from vary.modeling.processor import VaryProcessor, load_image
from vary.modeling.tokenizer import qwen_tokenizer

BUNDLED = conformance_cases(FIXTURES_DIR / "conformance")
SHARED = conformance_cases(CONFORMANCE_DIR)
NO_SHARED = pytest.param(
    None,
    id="shared",
    marks=pytest.mark.skip(reason=f"no conformance cases in {CONFORMANCE_DIR} (set VARY_CONFORMANCE_DIR)"),
)


def _case(case_dir: Path) -> dict:
    return json.loads((case_dir / "case.json").read_text())


def cases(where=lambda case: True) -> list:
    """Bundled + shared cases whose case.json satisfies `where`; a visible skip when the shared ones are absent."""
    params = [pytest.param(p, id=f"bundled-{p.name}") for p in BUNDLED if where(_case(p))]
    params += [pytest.param(p, id=f"shared-{p.name}") for p in SHARED if where(_case(p))]
    return params if SHARED else [*params, NO_SHARED]


def _has_resize_check(case: dict) -> bool:
    return any("expected" in prep for prep in case["preprocess"].values())


def _has_qwen_prompt(case: dict) -> bool:
    return "prompt" in case and case.get("lm") in ("qwen", "qwen2")


ATOL = 1e-3
PIXEL_ATOL = 1e-6


def test_shared_cases_found_where_the_folder_is_named():
    """CI names the folder (VARY_CONFORMANCE_DIR): there, finding no case is a failure, not a skip."""
    if "VARY_CONFORMANCE_DIR" not in os.environ:
        pytest.skip("VARY_CONFORMANCE_DIR not set: shared cases are optional in a plain clone")
    assert SHARED, f"VARY_CONFORMANCE_DIR={CONFORMANCE_DIR} holds no conformance case (folders with case.json)"


def test_bundled_case_present():
    assert [p.name for p in BUNDLED] == ["vary_tiny_a"], f"tests/fixtures/conformance is incomplete: {BUNDLED}"


def _model_inputs(case: dict) -> dict[str, dict]:
    """Preprocess entries that feed the model (entries with `expected` check the resize step alone)."""
    return {name: prep for name, prep in case["preprocess"].items() if "expected" not in prep}


def _case_inputs(case_dir: Path, case: dict, model) -> dict[str, torch.Tensor]:
    processor = VaryProcessor(model.config, tokenizer=None)
    inputs = {"input_ids": torch.tensor([case["input_ids"]])}
    for file_name, prep in _model_inputs(case).items():
        if prep.get("branch", "vision_vocabulary") == "clip":
            inputs["pixel_values_clip"] = processor.clip_tensor(case_dir / file_name)[None]
        else:
            inputs["pixel_values"] = processor.image_tensor(case_dir / file_name)[None]
    return inputs


def _load_case_model(case_dir: Path):
    case = _case(case_dir)
    preps = _model_inputs(case).values()
    high = next(p for p in preps if p.get("branch", "vision_vocabulary") != "clip")
    overrides = dict(image_mean=high["mean"], image_std=high["std"])
    if "resize" in high:
        overrides["image_resample"] = high["resize"]
    clip = next((p for p in preps if p.get("branch") == "clip"), None)
    if clip is not None:
        overrides |= dict(clip_image_mean=clip["mean"], clip_image_std=clip["std"])
    if "clip" in case:  # head count is the one size the weights cannot tell
        overrides["clip_num_attention_heads"] = case["clip"]["num_attention_heads"]
    model = load_official(case_dir / "checkpoint", **overrides)
    return case, model


@pytest.mark.parametrize("case_dir", cases())
def test_official_parity(case_dir: Path):
    case, model = _load_case_model(case_dir)
    expected = load_file(case_dir / "expected.safetensors")
    vv = case["vision_vocabulary"]
    assert model.config.vision_config.hidden_size == vv["embed_dim"]
    assert list(model.config.vision_config.global_attn_indexes) == vv["global_attn_indexes"]
    assert model.config.vision_config.window_size == vv["window_size"]
    assert list(model.config.downsample_channels) == vv["downsample_channels"]

    inputs = _case_inputs(case_dir, case, model)
    if "pixel_values_sample" in expected:
        sample = expected["pixel_values_sample"]
        step = inputs["pixel_values"].shape[-1] // sample.shape[-1]
        torch.testing.assert_close(inputs["pixel_values"][0, :, ::step, ::step], sample, atol=PIXEL_ATOL, rtol=0)
    with torch.no_grad():
        if "vision_features" in expected:
            features = model.vision_vocab(inputs["pixel_values"])[0]
            torch.testing.assert_close(features, expected["vision_features"], atol=ATOL, rtol=0)
        if "projected_features" in expected:
            projected = model.encode_images(inputs["pixel_values"], inputs.get("pixel_values_clip"))[0]
            torch.testing.assert_close(projected, expected["projected_features"], atol=ATOL, rtol=0)
        out = model(**inputs, output_hidden_states=True)
    hidden = out.hidden_states[-1][0]
    torch.testing.assert_close(hidden, expected["last_hidden_state"], atol=ATOL, rtol=0)
    if "logits" in expected:
        torch.testing.assert_close(out.logits[0], expected["logits"], atol=ATOL, rtol=0)
    else:
        torch.testing.assert_close(out.logits[0, -8:], expected["logits_last8"], atol=ATOL, rtol=0)

    # The official runs force exactly max_new_tokens tokens: ids in suppressed_token_ids (EOS) are masked.
    suppressed = case.get("suppressed_token_ids")
    with torch.no_grad():
        generated = model.generate(
            **inputs, max_new_tokens=case["max_new_tokens"], min_new_tokens=case["max_new_tokens"],
            do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=0, suppress_tokens=suppressed,
        )  # fmt: skip
    new_ids = generated[0, inputs["input_ids"].shape[1] :]
    assert new_ids.tolist() == expected["generated_ids"].tolist()


@pytest.mark.parametrize("case_dir", cases(_has_resize_check))
def test_official_resize(case_dir: Path):
    """Entries with `expected` pin the resize step alone: our processor's resize equals the official one."""
    case, model = _load_case_model(case_dir)
    checks = {name: prep for name, prep in case["preprocess"].items() if "expected" in prep}
    processor = VaryProcessor(model.config, tokenizer=None)
    for name, prep in checks.items():
        assert prep["size"] == model.config.image_size and prep["resize"] == model.config.image_resample
        ours = processor.image_tensor(case_dir / name)
        reference = processor.image_tensor(case_dir / prep["expected"])  # already at size: no resize
        assert load_image(case_dir / name).size != (prep["size"], prep["size"])  # the resize really runs
        torch.testing.assert_close(ours, reference, atol=0, rtol=0)


@pytest.mark.parametrize("case_dir", cases(_has_qwen_prompt))
def test_official_prompt_tokenization(case_dir: Path):
    """Cases that record their prompt text: our tokenizer gives the official ids (QWen tiktoken + specials)."""
    case = _case(case_dir)
    tokenizer = qwen_tokenizer(QWEN_TIKTOKEN)
    for token, idx in case.get("special_token_ids", {}).items():
        assert tokenizer.convert_tokens_to_ids(token) == idx
    assert tokenizer(case["prompt"]["text"], add_special_tokens=False).input_ids == case["input_ids"]
