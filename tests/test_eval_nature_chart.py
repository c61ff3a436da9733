"""The data engine's own eval tasks: natural photos (nature sentence accuracy) and charts (python-dict
match), exact scores on hand-made answers, the OCR baselines' treatment, and a shard folder end to end."""

from __future__ import annotations

import pytest
from PIL import Image

from vary.data.engine import GenerateConfig, generate
from vary.eval.baselines import UnsupportedTask, _ocr_only
from vary.eval.datasets import EvalRecord, load_dataset
from vary.eval.metrics import METRIC_FAMILIES, chart_scores, score
from vary.eval.report import write_outputs
from vary.eval.runner import evaluate
from vary.prompts import CHART_ANSWER_PREFIX, NATURE_SENTENCES

ONE = CHART_ANSWER_PREFIX + "{'title': 'Sales', 'data': {'apples': 3.5, 'pears': 4, 'plums': 0.0}}"
MULTI = CHART_ANSWER_PREFIX + "{'title': 'T', 'data': {'2023': {'a': 1.5, 'b': 2}, '2024': {'a': 3, 'b': -4.25}}}"


def chart(data: str, title: str = "Sales") -> str:
    return CHART_ANSWER_PREFIX + "{'title': " + repr(title) + ", 'data': " + data + "}"


# ---- nature ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prediction",
    [
        "It's an image of nature",
        "  it's AN image   of nature.  ",
        "THIS IS A NATURAL IMAGE!",
        "Here's a nature picture。",
    ],
)
def test_nature_sentence_any_of_the_five_in_any_case(prediction):
    # the reference is another sentence: any of the five counts
    assert score("nature", prediction, NATURE_SENTENCES[2]) == {"nature_accuracy": 1.0}


@pytest.mark.parametrize(
    "prediction",
    ["", "A mountain lake at dawn", "It's an image of nature with a dog", "Its an image of nature", "nature"],
)
def test_nature_other_text_scores_zero(prediction):
    assert score("nature", prediction, NATURE_SENTENCES[0]) == {"nature_accuracy": 0.0}


# ---- chart -----------------------------------------------------------------------------------------------
def test_chart_right_values_match_whatever_the_title_and_spelling():
    same = chart("{'apples': 3.5, ' pears ': 4.0, 'plums': 0}", title="another title")
    assert chart_scores(same, ONE) == {"chart_parses": 1.0, "chart_match": 1.0, "chart_value_accuracy": 1.0}
    no_prefix = ONE[len(CHART_ANSWER_PREFIX) :]
    assert score("chart", no_prefix, ONE)["chart_match"] == 1.0
    assert score("chart", chart("{'apples': 3.5000000001, 'pears': 4, 'plums': 0}"), ONE)["chart_match"] == 1.0


def test_chart_one_wrong_value():
    s = chart_scores(chart("{'apples': 3.5, 'pears': 4.1, 'plums': 0.0}"), ONE)
    assert s == {"chart_parses": 1.0, "chart_match": 0.0, "chart_value_accuracy": pytest.approx(2 / 3)}


def test_chart_non_numeric_and_bool_values_are_wrong():
    s = chart_scores(chart("{'apples': '3.5', 'pears': True, 'plums': 0.0}"), ONE)
    assert s == {"chart_parses": 1.0, "chart_match": 0.0, "chart_value_accuracy": pytest.approx(1 / 3)}


@pytest.mark.parametrize(
    "prediction",
    ["", "apples 3.5, pears 4", CHART_ANSWER_PREFIX + "{'title': 'x'}", chart("[1, 2]"), "__import__('os')"],
)
def test_chart_unparsable_scores_zero(prediction):
    assert chart_scores(prediction, ONE) == {"chart_parses": 0.0, "chart_match": 0.0, "chart_value_accuracy": 0.0}


def test_chart_extra_or_missing_category_is_no_match():
    extra = chart_scores(chart("{'apples': 3.5, 'pears': 4, 'plums': 0.0, 'kiwis': 1}"), ONE)
    assert extra == {"chart_parses": 1.0, "chart_match": 0.0, "chart_value_accuracy": 1.0}
    missing = chart_scores(chart("{'apples': 3.5, 'pears': 4}"), ONE)
    assert missing == {"chart_parses": 1.0, "chart_match": 0.0, "chart_value_accuracy": pytest.approx(2 / 3)}
    # two keys that are one category after strip(), with different numbers: ambiguous, and one entry too many
    dup = chart_scores(chart("{'apples': 3.5, 'apples ': 9, 'pears': 4, 'plums': 0.0}"), ONE)
    assert dup == {"chart_parses": 1.0, "chart_match": 0.0, "chart_value_accuracy": pytest.approx(2 / 3)}


def test_chart_multi_series():
    right = chart("{'2023': {'a': 1.5, 'b': 2.0}, ' 2024': {'a': 3.0, 'b': -4.25}}")
    assert chart_scores(right, MULTI) == {"chart_parses": 1.0, "chart_match": 1.0, "chart_value_accuracy": 1.0}
    one_wrong = chart("{'2023': {'a': 1.5, 'b': 2}, '2024': {'a': 3, 'b': 4.25}}")
    assert chart_scores(one_wrong, MULTI) == {"chart_parses": 1.0, "chart_match": 0.0, "chart_value_accuracy": 0.75}
    swapped = chart("{'2024': {'a': 1.5, 'b': 2}, '2023': {'a': 3, 'b': -4.25}}")  # series names matter
    assert chart_scores(swapped, MULTI)["chart_value_accuracy"] == 0.0
    extra_series = chart("{'2023': {'a': 1.5, 'b': 2}, '2024': {'a': 3, 'b': -4.25}, '2025': {'a': 1}}")
    assert chart_scores(extra_series, MULTI) == {
        "chart_parses": 1.0,
        "chart_match": 0.0,
        "chart_value_accuracy": 1.0,
    }
    flattened = chart("{'a': 1.5, 'b': 2}")  # one series where the reference has two
    assert chart_scores(flattened, MULTI) == {"chart_parses": 1.0, "chart_match": 0.0, "chart_value_accuracy": 0.0}


def test_families_tasks_and_bad_reference():
    assert {"nature", "chart"} <= set(METRIC_FAMILIES)
    blank = Image.new("RGB", (8, 8))
    assert EvalRecord("p", blank, NATURE_SENTENCES[0], "natural").metric == "nature"
    good = EvalRecord("c", blank, ONE, "chart")
    assert (good.metric, good.error) == ("chart", None)
    bad = EvalRecord("c", blank, "no dict here", "chart")
    assert bad.error.startswith("reference is not a chart answer")


def test_ocr_baselines_skip_charts_but_read_photos():
    with pytest.raises(UnsupportedTask, match="python dict"):
        _ocr_only("tesseract", "chart")
    with pytest.raises(UnsupportedTask):
        _ocr_only("tesseract", "ask")
    _ocr_only("tesseract", "natural")  # OCR as usual, scored with nature_accuracy


# ---- end to end: data-engine shards -> runner -> summary and report ----------------------------------
class HalfRight:
    """Answers the first record of each task with its reference and the other with junk; no charts for
    the OCR-like second model."""

    name = "half"

    def __init__(self, references: dict[str, str]):
        self.references = references  # image bytes -> reference
        self.seen: set[str] = set()

    def predict(self, image, task, question=None):
        if task not in self.seen:
            self.seen.add(task)
            return self.references[image.tobytes()]
        return "a photo of a tree" if task == "natural" else "{'title': 'x', 'data': {'nothing': 1}}"


class OcrLike:
    name = "ocr-like"

    def predict(self, image, task, question=None):
        _ocr_only(self.name, task)
        return "some text"


def test_shards_end_to_end(tmp_path):
    data = tmp_path / "data"
    generate(GenerateConfig("natural", data / "natural", count=2, size=128, progress=False))
    generate(GenerateConfig("charts", data / "charts", count=2, size=256, options={"kinds": "bar"}, progress=False))
    records = list(load_dataset(data))
    assert sorted((r.task, r.metric) for r in records) == [("chart", "chart")] * 2 + [("natural", "nature")] * 2
    assert all(r.error is None for r in records)
    references = {r.load_image().tobytes(): r.reference for r in records}

    run = evaluate(records, [HalfRight(references), OcrLike()], progress=False)
    summary = run.summary()
    half = summary["half"]
    assert (half["natural-en"]["n"], half["natural-en"]["nature_accuracy"]) == (2, 0.5)
    charts = half["charts-en"]
    assert charts["n"] == 2 and charts["chart_match"] == 0.5 and charts["chart_parses"] == 1.0
    assert charts["chart_value_accuracy"] == 0.5
    ocr = summary["ocr-like"]
    assert ocr["natural-en"]["nature_accuracy"] == 0.0
    assert ocr["charts-en"]["n"] == 0 and ocr["charts-en"]["unsupported"] == 2

    paths = write_outputs(run, tmp_path / "out")
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    report = paths["report"].read_text(encoding="utf-8")
    assert "## natural-en (nature)" in report and "## charts-en (chart)" in report
    assert "Nature sentence accuracy ↑" in report and "Exact dict match ↑" in report
    assert "| half | 2 | 50.00 | 50.00 | 100.00 |" in report  # chart match, value accuracy, parses
    assert "| ocr-like | 0 | n/a | n/a | n/a |" in report
