"""`vary convert`: official checkpoint -> our format, same outputs after reloading; ours -> another dtype."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

import vary
from tests_paths import CONFORMANCE_DIR
from vary.cli import app


@pytest.mark.skipif(not (CONFORMANCE_DIR / "vary_base_a").is_dir(), reason=f"no vary_base_a case in {CONFORMANCE_DIR}")
def test_convert_cli_round_trip(tmp_path):
    src = CONFORMANCE_DIR / "vary_base_a" / "checkpoint"
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    official = vary.load_model(src)
    converted = vary.load_model(tmp_path / "out")
    assert converted.config.clip_config is not None and converted.config.template == "mpt"
    cfg = official.config
    ids = torch.tensor([[9, cfg.image_start_token_id] + [cfg.image_patch_token_id] * 256 + [cfg.image_end_token_id, 7]])
    inputs = dict(
        input_ids=ids, pixel_values=torch.randn(1, 3, 1024, 1024), pixel_values_clip=torch.randn(1, 3, 224, 224)
    )
    with torch.no_grad():
        torch.testing.assert_close(official(**inputs).logits, converted(**inputs).logits, atol=0, rtol=0)


def test_convert_halves_our_own_checkpoint(tmp_path, tiny_model_dir):
    """float16 for shipping: half the bytes, the tokenizer alongside, and nearly the same outputs in float32."""
    out = tmp_path / "half"
    result = CliRunner().invoke(app, ["convert", str(tiny_model_dir), str(out), "--dtype", "float16"])
    assert result.exit_code == 0, result.output
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # noqa: SIM118 (not iterable)
    size = (tiny_model_dir / "model.safetensors").stat().st_size
    assert (out / "model.safetensors").stat().st_size < 0.6 * size
    (model, processor), (half, half_processor) = vary.load(tiny_model_dir), vary.load(out)
    assert next(half.parameters()).dtype == torch.float32  # loading still gives float32 on the CPU
    assert half_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    cfg = model.config
    text = processor.tokenizer("a b", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[cfg.image_start_token_id] + [cfg.image_patch_token_id] * cfg.image_token_len
                        + [cfg.image_end_token_id, *text]])  # fmt: skip
    side = cfg.vision_config.image_size
    inputs = dict(input_ids=ids, pixel_values=torch.randn(1, 3, side, side))
    with torch.no_grad():
        full, halved = model(**inputs).logits, half(**inputs).logits
    assert not torch.equal(full, halved)  # the weights were rounded...
    torch.testing.assert_close(halved, full, atol=2e-2, rtol=2e-2)  # ...by no more than float16's precision


def test_convert_refuses_what_it_cannot_do(tmp_path, tiny_model_dir):
    def convert(*args: str) -> str:
        result = CliRunner().invoke(app, ["convert", *map(str, args)])
        assert result.exit_code == 2
        return result.output

    assert "carry their own preprocessing" in convert(tiny_model_dir, tmp_path / "a", "--image-norm", "clip")
    assert "must not be the input folder" in convert(tiny_model_dir, tiny_model_dir, "--dtype", "float16")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    assert "is not a Vary model" in convert(tmp_path / "bert", tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
