"""Our checkpoints load strictly: a missing weight is an error (not a random tensor), and `convert` refuses."""

from __future__ import annotations

import shutil

import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from vary.cli import app
from vary.modeling.loading import load_model
from vary.modeling.official import CheckpointError


@pytest.fixture
def partial_dir(tmp_path, tiny_model_dir):
    """The tiny model with every tensor of decoder layer 0 removed."""
    folder = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, folder)
    state = load_file(folder / "model.safetensors")
    dropped = [k for k in state if ".decoder.layers.0." in k]
    assert dropped
    save_file({k: v for k, v in state.items() if k not in dropped}, folder / "model.safetensors", {"format": "pt"})
    return folder, dropped


def test_missing_weights_are_an_error(partial_dir):
    folder, dropped = partial_dir
    with pytest.raises(CheckpointError, match=rf"incomplete checkpoint, {len(dropped)} weight\(s\) missing"):
        load_model(folder)


def test_partial_load_is_an_explicit_opt_out(partial_dir):
    folder, dropped = partial_dir
    model = load_model(folder, allow_missing=True)
    assert set(dropped) <= set(model.state_dict())


def test_complete_checkpoint_still_loads(tiny_model_dir):
    load_model(tiny_model_dir)


def test_convert_refuses_an_incomplete_checkpoint(partial_dir, tmp_path):
    folder, _ = partial_dir
    result = CliRunner().invoke(app, ["convert", str(folder), str(tmp_path / "out")])
    assert result.exit_code == 2 and "incomplete checkpoint" in result.output
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_ocr_refuses_an_incomplete_checkpoint(partial_dir, tmp_path):
    from PIL import Image

    folder, _ = partial_dir
    Image.new("RGB", (64, 64), "white").save(tmp_path / "page.png")
    result = CliRunner().invoke(app, ["ocr", str(tmp_path / "page.png"), "--model", str(folder)])
    assert result.exit_code != 0 and "incomplete checkpoint" in result.output
