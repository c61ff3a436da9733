"""A fair Tesseract baseline: the data set's declared language when it has one, else the better-confidence
reading of eng and chi_sim, and the report says which language ran (issue 35: Chinese blocks read as English)."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from test_eval_runner import EN_FONT, EN_LINES, ZH_FONT, ZH_LINES, render
from vary.cli import app
from vary.eval.baselines import Prediction, TesseractPredictor
from vary.eval.datasets import load_dataset
from vary.eval.runner import evaluate

pytestmark = pytest.mark.skipif(shutil.which("tesseract") is None, reason="needs the tesseract binary")


@pytest.fixture(scope="module")
def zh_blocks(tmp_path_factory):
    """Chinese text blocks from the data engine (the set issue 35 measured on), as shards that declare lang zh."""
    out = tmp_path_factory.mktemp("zh_blocks")
    result = CliRunner().invoke(app, ["data", "generate", "blocks", "--out", str(out), "--count", "4",
                                      "--lang", "zh", "--seed", "35", "--workers", "1", "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow  # Tesseract over a block set: ~15 s on 2 cores
def test_declared_language_is_used_and_reported(zh_blocks, tmp_path):
    result = CliRunner().invoke(app, ["eval", "run", "--data", str(zh_blocks), "--model", "tesseract",
                                      "--model", "tesseract:chi_sim", "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    from vary.eval.report import load_run

    summary = load_run(tmp_path / "results.json").summary()
    auto, fixed = summary["tesseract"]["blocks-zh"], summary["tesseract:chi_sim"]["blocks-zh"]
    assert auto["langs"] == {"chi_sim": 4}
    assert abs(auto["edit_distance"] - fixed["edit_distance"]) <= 0.03
    report = (tmp_path / "report.md").read_text()
    assert "## Languages the OCR engines ran" in report and "`tesseract` on `blocks-zh`: chi_sim 4" in report


def test_without_a_declared_language_the_more_confident_reading_wins():
    tesseract = TesseractPredictor()
    zh = tesseract.predict(render(ZH_LINES, ZH_FONT), "ocr")
    en = tesseract.predict(render(EN_LINES, EN_FONT), "ocr")
    assert isinstance(zh, Prediction) and (zh.lang, en.lang) == ("chi_sim", "eng")
    assert "视觉词表" in zh and "quick brown fox" in en


@pytest.mark.slow  # Tesseract runs: ~5 s on 2 cores
def test_declared_language_is_not_second_guessed(zh_blocks):
    records = list(load_dataset(zh_blocks, limit=1))
    run = evaluate(records, [TesseractPredictor()], progress=False)
    assert run.samples[0]["lang"] == "chi_sim"
    records[0].meta["lang"] = "en"  # a data set that declares English is read as English
    run = evaluate(records, [TesseractPredictor()], progress=False)
    assert run.samples[0]["lang"] == "eng"
