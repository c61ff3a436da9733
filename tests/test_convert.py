"""`vary convert`: official checkpoint -> our format, same outputs after reloading."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

import vary
from tests_paths import CONFORMANCE_DIR
from vary.cli import app


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


def test_convert_refuses_a_folder_that_is_not_official(tmp_path, tiny_model_dir):
    result = CliRunner().invoke(app, ["convert", str(tiny_model_dir), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "not an official Vary checkpoint" in result.output
