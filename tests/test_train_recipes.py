"""Recipes: the shipped stage files, command-line overrides, and clear errors for bad keys and values."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from vary.cli import app
from vary.train.recipes import RecipeError, load_recipe


@pytest.mark.parametrize(
    ("name", "preset", "lr", "frozen", "global_batch"),
    [
        ("vary-tiny", "vary-tiny", 5e-5, [], 512),
        ("vary-base-pretrain", "vary-base-qwen", 5e-5, ["vision_vocab", "clip"], 256),
        ("vary-base-sft", "vary-base-qwen", 1e-5, ["vision_vocab", "clip"], 256),
        ("nano", "nano", 5e-4, [], 16),
    ],
)
def test_shipped_recipes_hold_the_paper_values(name, preset, lr, frozen, global_batch):
    recipe = load_recipe(name)
    assert recipe.model.preset == preset and recipe.optim.lr == lr
    assert recipe.model.freeze == frozen and recipe.train.global_batch_size == global_batch
    assert recipe.optim.scheduler == "cosine"


def test_overrides_reach_every_section_and_parse_yaml_values():
    recipe = load_recipe("nano", ["optim.lr=1e-4", "train.max_steps=7", "data.sources=[{path: a}, {path: b, weight: 2}]",
                                  "model.config.text_config.hidden_size=64", "model.freeze=[clip]", "init.sam=/w/sam.pth"])  # fmt: skip
    assert recipe.optim.lr == 1e-4 and isinstance(recipe.optim.lr, float)  # YAML 1.1 reads 1e-4 as a string
    assert recipe.train.max_steps == 7
    assert [(s.path, s.weight) for s in recipe.data.sources] == [("a", 1.0), ("b", 2.0)]
    assert recipe.model.config["text_config"] == {"hidden_size": 64}
    assert recipe.model.freeze == ["clip"] and recipe.init.sam == "/w/sam.pth"


def test_unknown_key_in_a_file_names_the_file_the_key_and_a_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: 1.0e-4\n  learning_rate: 3\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(path) in str(err.value) and "'optim.learning_rate'" in str(err.value) and "known keys" in str(err.value)
    path.write_text("trian:\n  max_steps: 3\n")
    with pytest.raises(RecipeError, match=r"unknown key 'trian' \(did you mean 'train'\?\)"):
        load_recipe(path)


def test_unknown_key_and_bad_value_on_the_command_line():
    with pytest.raises(RecipeError, match=r"command-line override 'optim\.lrr=1'.*did you mean 'lr'"):
        load_recipe("nano", ["optim.lrr=1"])
    with pytest.raises(RecipeError, match="train.batch_size must be an integer"):
        load_recipe("nano", ["train.batch_size=two"])
    with pytest.raises(RecipeError, match="mixed_precision must be no, bf16 or fp16"):
        load_recipe("nano", ["train.mixed_precision=fp8"])
    with pytest.raises(RecipeError, match="model.freeze has unknown part 'eyes'"):
        load_recipe("nano", ["model.freeze=[eyes]"])
    with pytest.raises(RecipeError, match="expected key.path=value"):
        load_recipe("nano", ["optim.lr"])
    with pytest.raises(RecipeError, match="model.tokenizer_type must be bpe or chars"):
        load_recipe("nano", ["model.tokenizer_type=words"])


def test_missing_recipe_lists_the_known_ones():
    with pytest.raises(RecipeError, match="known: .*nano.*vary-tiny"):
        load_recipe("no-such-recipe")


def test_cli_show_and_its_error_exit_code():
    runner = CliRunner()
    shown = runner.invoke(app, ["train", "show", "vary-base-sft", "optim.lr=2e-6"])
    assert (
        shown.exit_code == 0
        and "lr: 2.0e-06" in shown.output
        and "checkpoint: runs/vary-base-pretrain/model" in shown.output
    )
    bad = runner.invoke(app, ["train", "run", "nano", "optim.nope=1"])
    assert bad.exit_code == 2 and "unknown key 'optim.nope'" in bad.output


def test_freezable_parts_are_the_models_part_names():
    """Recipes check part names without a model (recipes.FREEZABLE); the model names its parts itself
    (part_parameters). A Vary-tiny has every part but the CLIP branch's two and the reading head; a reader
    has a reading head and a conv vocabulary without SAM's two halves."""
    from conftest import tiny_config
    from vary.modeling.vary import VaryForCausalLM
    from vary.train.recipes import FREEZABLE

    parts = set(VaryForCausalLM(tiny_config(image_size=128)).part_parameters())
    assert parts <= set(FREEZABLE) and set(FREEZABLE) - parts == {"clip", "projector_clip", "reading_head"}
    from test_reader import tiny_reader

    reader = set(VaryForCausalLM(tiny_reader(64)).part_parameters())
    assert reader == {"vision_vocab", "reading_head", "projector_vary", "lm"}
