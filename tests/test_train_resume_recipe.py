"""`vary train run --resume` with a changed recipe is refused, unless only the run's length or bookkeeping
changed (which a resumed run really applies), so recipe.yaml never records values the run does not use."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from vary.cli import app
from vary.train.recipes import RecipeError, check_resume, load_recipe


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as the trainer leaves it: recipe.yaml of the recipe it ran."""
    out = tmp_path / "run"
    out.mkdir()
    recipe = load_recipe("nano", [f"train.output_dir='{out}'", "train.max_steps=10", "data.sources=[{path: d}]"])
    (out / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    return out


def test_resume_with_another_learning_rate_is_refused(run_dir):
    result = CliRunner().invoke(
        app, ["train", "run", "nano", "--out", str(run_dir), "--data", "d", "--resume", "train.max_steps=10",
              "optim.lr=0.1"],
    )  # fmt: skip
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "the recipe differs from" in message and "optim.lr" in message and "0.1" in message
    assert "lr: 0.1" not in (run_dir / "recipe.yaml").read_text()  # recipe.yaml still tells the truth


def test_length_and_bookkeeping_may_change(run_dir):
    same = [f"train.output_dir='{run_dir}'", "data.sources=[{path: d}]"]
    check_resume(load_recipe("nano", [*same, "train.max_steps=10"]), run_dir)
    check_resume(load_recipe("nano", [*same, "train.max_steps=40", "train.save_every=5"]), run_dir)
    with pytest.raises(RecipeError, match=r"data\.sources"):
        check_resume(load_recipe("nano", [f"train.output_dir='{run_dir}'", "train.max_steps=10",
                                          "data.sources=[{path: other}]"]), run_dir)  # fmt: skip
    with pytest.raises(RecipeError, match=r"train\.seed \(0 -> 3\)"):
        check_resume(load_recipe("nano", [*same, "train.max_steps=10", "train.seed=3"]), run_dir)


def test_a_folder_without_recipe_yaml_is_not_checked(tmp_path):
    check_resume(load_recipe("nano", ["train.max_steps=10"]), tmp_path)
