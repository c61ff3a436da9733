"""The model shipped in the package: small, float16 on disk, used without --model, and reading the example page.

The thresholds are the shipped model's measured scores on examples/ with a margin (its card gives them): they
fail if the weights, the loader or the reading path break, not only if the files are missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageOps
from rapidfuzz.distance import Levenshtein
from safetensors import safe_open
from typer.testing import CliRunner

from vary.assets import MODEL_DIR, bundled_model_dir
from vary.cli import app
from vary.eval.metrics import chart_scores
from vary.infer.pipeline import Pipeline
from vary.prompts import NATURE_SENTENCES

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.usefixtures("one_thread")


def edit_distance(prediction: str, reference: str) -> float:
    return Levenshtein.normalized_distance(prediction.strip(), reference.strip())


def example(name: str, dark: bool) -> Image.Image:
    """examples/NAME.png, or inverted: light text on a dark page (a dark-mode screenshot, a dark theme)."""
    image = Image.open(EXAMPLES / f"{name}.png").convert("RGB")
    return ImageOps.invert(image) if dark else image


def test_the_package_ships_a_small_float16_model_with_its_card():
    assert bundled_model_dir() == MODEL_DIR
    weights = MODEL_DIR / "model.safetensors"
    assert weights.stat().st_size <= 60 * 2**20
    with safe_open(weights, "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    assert dtypes <= {"F16", "I64"}
    card = (MODEL_DIR / "MODEL_CARD.md").read_text()
    for section in ("## Data", "## Recipe", "## Held-out scores", "## Limits"):
        assert section in card


@pytest.mark.parametrize("name, ceiling", [("sample_page", 0.05), ("sample_page_zh", 0.25)])  # measured 0.000, 0.171
@pytest.mark.parametrize("dark", [False, True])
def test_the_bundled_model_reads_the_example_pages(name, ceiling, dark):
    # a dark page is read inverted: 0.31 / 0.90 if it were not
    text = Pipeline.from_pretrained().ocr(example(name, dark)).text
    assert edit_distance(text, (EXAMPLES / f"{name}.txt").read_text()) <= ceiling, text


@pytest.mark.parametrize("dark", [False, True])
def test_the_bundled_model_reads_the_example_bar_chart_into_a_dict(dark):
    answer = Pipeline.from_pretrained().run(example("sample_chart", dark), "chart")
    scores = chart_scores(answer, (EXAMPLES / "sample_chart.txt").read_text())
    # measured 1.0 both ways (4 of 4; 2 of 4 without the word list: two labels one letter off; held-out charts:
    # 80% English); 0 of 4 dark if it were read as drawn
    assert scores["chart_parses"] == 1.0 and scores["chart_value_accuracy"] >= 0.75, answer


def test_the_main_job_names_the_bundled_model():
    result = CliRunner().invoke(app, ["ocr", str(EXAMPLES / "sample_page.png")])
    assert result.exit_code == 0, result.output
    assert "model: bundled:" in result.stderr and result.stdout.strip()


def test_a_photograph_it_never_saw_gets_a_nature_sentence():
    """matplotlib's sample photograph (a dependency, so in every install) is not one of the training photos."""
    from matplotlib import cbook

    assert (
        Pipeline.from_pretrained().ocr(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).text
        in NATURE_SENTENCES
    )
