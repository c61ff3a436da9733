"""The evaluation runner end to end: real Tesseract on a tiny rendered set, dataset readers, bad inputs,
the CLI, and a random-weight model through the inference pipeline."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont
from typer.testing import CliRunner

from vary.cli import app
from vary.eval.baselines import UnsupportedTask, get_predictor, join_reading_order
from vary.eval.datasets import EvalRecord, UnknownDatasetFormat, detect_format, load_dataset
from vary.eval.report import compare_runs, load_run, merge_runs, render_markdown, write_outputs
from vary.eval.runner import evaluate

EN_FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
ZH_FONT = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"
EN_LINES = ["The quick brown fox jumps", "over the lazy dog near", "the river bank at noon."]
ZH_LINES = ["视觉词表网络在文档上训练", "然后与原有的词表并行运行", "模型能够读懂密集的文字"]


def render(lines: list[str], font_path: str, size: int = 32) -> Image.Image:
    font = ImageFont.truetype(font_path, size)
    image = Image.new("RGB", (40 + max(int(font.getlength(t)) for t in lines), 40 + len(lines) * (size + 16)), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((20, 20 + i * (size + 16)), line, font=font, fill="black")
    return image


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    """en/ and zh/ pages with .txt ground truth, plus the bad cases: an unreadable image, an image
    without ground truth, and a ground-truth file without an image."""
    root = tmp_path_factory.mktemp("tiny_set")
    (root / "en").mkdir()
    (root / "zh").mkdir()
    render(EN_LINES, EN_FONT).save(root / "en" / "p1.png")
    (root / "en" / "p1.txt").write_text("\n".join(EN_LINES))
    render(ZH_LINES, ZH_FONT).save(root / "zh" / "p2.png")
    (root / "zh" / "p2.txt").write_text("\n".join(ZH_LINES))
    (root / "en" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "en" / "broken.txt").write_text("anything")
    shutil.copy(root / "en" / "p1.png", root / "en" / "no_truth.png")
    (root / "zh" / "orphan.txt").write_text("孤儿")
    return root


@pytest.fixture(scope="module")
def tesseract_run(tiny_set, tmp_path_factory):
    """`vary eval run` with Tesseract, through the CLI."""
    out = tmp_path_factory.mktemp("tesseract_run")
    result = CliRunner().invoke(
        app, ["eval", "run", "--data", str(tiny_set), "--model", "tesseract", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return out, result.output


def test_tesseract_run_scores_and_reports(tesseract_run):
    out, stdout = tesseract_run
    run = load_run(out / "results.json")
    summary = run.summary()["tesseract"]
    assert summary["en"]["n"] == 1 and summary["en"]["f1"] > 0.9 and summary["en"]["edit_distance"] < 0.1
    assert summary["zh"]["n"] == 1 and summary["zh"]["char_f1"] > 0.8  # script detection picked chi_sim
    ok = [s for s in run.samples if s["status"] == "ok"]
    assert {s["id"] for s in ok} == {"en/p1", "zh/p2"} and all(s["prediction"] and s["seconds"] > 0 for s in ok)
    report = (out / "report.md").read_text()
    assert "## en (page)" in report and "| tesseract | 1 |" in report and "Edit Distance" in report
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert "## zh (page)" in stdout  # the report is also printed


def test_bad_inputs_are_reported_per_sample(tesseract_run):
    out, _ = tesseract_run
    errors = {e["id"]: e["error"] for e in json.loads((out / "results.json").read_text())["data_errors"]}
    assert set(errors) == {"en/broken", "en/no_truth", "zh/orphan"}
    assert "unreadable image" in errors["en/broken"]
    assert "no ground truth for no_truth.png" in errors["en/no_truth"]
    assert "orphan.txt has no image" in errors["zh/orphan"]
    assert "Data errors" in (out / "report.md").read_text()


class Echo:
    """Answers every page with one fixed text and every question with 'yes'."""

    name = "echo"

    def __init__(self, text: str):
        self.text = text

    def predict(self, image, task, question=None):
        return "yes" if task == "ask" else self.text


class Crashy:
    name = "crashy"

    def predict(self, image, task, question=None):
        raise RuntimeError("decoder exploded")


class OcrOnly:
    name = "ocr-only"

    def predict(self, image, task, question=None):
        if task == "ask":
            raise UnsupportedTask("no questions")
        return "hello world"


def _records() -> list[EvalRecord]:
    blank = Image.new("RGB", (32, 32), "white")
    return [
        EvalRecord(id="a", reference="hello world", task="ocr", subset="pages", image=blank),
        EvalRecord(id="q", reference=["Yes", "yep"], task="ask", question="ok?", subset="vqa", image=blank),
        EvalRecord(id="a", reference="hello world", task="ocr", subset="pages", image=blank),  # duplicate id
        EvalRecord(id="gone", reference="x", task="ocr", subset="pages", image="/nonexistent/x.png"),
    ]


def test_outcomes_errors_unsupported_duplicates(tmp_path):
    run = evaluate(_records(), [Echo("hello world"), Crashy(), OcrOnly()], progress=False)
    s = run.summary()
    assert s["echo"]["pages"]["f1"] == 1.0 and s["echo"]["vqa"]["anls"] == 1.0
    # a crash is scored as an empty prediction, and counted
    assert s["crashy"]["pages"]["errors"] == 1 and s["crashy"]["pages"]["f1"] == 0.0
    assert s["crashy"]["pages"]["edit_distance"] == 1.0
    # an OCR engine asked a question: not scored at all
    assert s["ocr-only"]["vqa"]["n"] == 0 and s["ocr-only"]["vqa"]["unsupported"] == 1
    errors = [e["error"] for e in run.data_errors]
    assert any("duplicate id 'a'" in e for e in errors) and any("unreadable image /nonexistent" in e for e in errors)
    report = render_markdown(run)
    assert "| ocr-only | 0 | n/a |" in report and "decoder exploded" in report
    write_outputs(run, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["summary"]["echo"]["pages"]["n"] == 1


def test_fox_compatible_flag_reaches_scores():
    recs = [EvalRecord(id="a", reference="the cat sat on a mat", task="ocr", image=Image.new("RGB", (8, 8)))]
    right = evaluate(recs, [Echo("the cat sat on the mat")], progress=False).summary()["echo"]["all"]
    fox_run = evaluate(recs, [Echo("the cat sat on the mat")], fox_compatible=True, progress=False)
    fox = fox_run.summary()["echo"]["all"]
    assert (right["precision"], right["recall"]) == pytest.approx((1.0, 5 / 6))
    assert (fox["precision"], fox["recall"]) == pytest.approx((5 / 6, 1.0))
    assert fox_run.meta["fox_compatible"] is True and "Fox/GOT-compatible" in render_markdown(fox_run)


def test_compare_cli_on_shared_ids(tmp_path):
    base = evaluate(_records()[:2], [Echo("hello")], progress=False)
    better = evaluate(_records()[:2], [Echo("hello world")], progress=False)
    write_outputs(base, tmp_path / "a")
    write_outputs(better, tmp_path / "b")
    text = compare_runs(base, better)
    assert "2 records in common" in text and "Δ (B − A)" in text
    assert "| F1 ↑ | 66.67 | 100.00 | +33.33 |" in text  # {hello} vs {hello, world}: F1 = 2/3
    result = CliRunner().invoke(
        app, ["eval", "compare", str(tmp_path / "a/results.json"), str(tmp_path / "b/results.json")]
    )
    assert result.exit_code == 0 and "+33.33" in result.output
    other = evaluate(
        [EvalRecord(id="z", reference="x", task="ocr", image=Image.new("RGB", (8, 8)))], [Echo("x")], progress=False
    )
    with pytest.raises(ValueError, match="share no"):
        compare_runs(base, other)


def test_cli_reports_bad_model_spec_and_unknown_format(tmp_path, tiny_set):
    result = CliRunner().invoke(
        app, ["eval", "run", "--data", str(tiny_set), "--model", "no-such-engine", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "unknown model spec 'no-such-engine'" in result.output
    (tmp_path / "data.csv").write_text("a,b\n")
    result = CliRunner().invoke(
        app, ["eval", "run", "--data", str(tmp_path / "data.csv"), "--model", "tesseract", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "unknown dataset format" in result.output


def test_unknown_formats_raise_clear_errors(tmp_path):
    (tmp_path / "weird.json").write_text(json.dumps([{"foo": 1}]))
    with pytest.raises(UnknownDatasetFormat, match="neither DocVQA .* nor ChartQA .*keys \\['foo'\\]"):
        detect_format(tmp_path / "weird.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownDatasetFormat, match="neither .tar shards nor images"):
        detect_format(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no dataset at"):
        detect_format(tmp_path / "missing")
    with pytest.raises(UnknownDatasetFormat, match="choose auto or one of"):
        list(load_dataset(tmp_path / "weird.json", format="coco"))


def test_docvqa_and_chartqa_readers(tmp_path):
    (tmp_path / "documents").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "documents" / "d1.png")
    docvqa = {"data": [
        {"questionId": 7, "question": "Date?", "answers": ["1 May", "May 1"], "image": "documents/d1.png"},
        {"questionId": 8, "question": "Who?", "answers": ["Bob"], "image": "documents/missing.png"},
        {"questionId": 9, "question": "Where?", "image": "documents/d1.png"},
    ]}  # fmt: skip
    (tmp_path / "val_v1.0.json").write_text(json.dumps(docvqa))
    recs = list(load_dataset(tmp_path / "val_v1.0.json"))
    assert [r.id for r in recs] == ["7", "8", "9"] and recs[0].metric == "anls" and recs[0].error is None
    assert (
        recs[0].reference == ["1 May", "May 1"] and recs[0].question == "Date?" and recs[0].load_image().size == (8, 8)
    )
    assert "missing.png" in recs[1].error and "no 'answers'" in recs[2].error

    chart_dir = tmp_path / "chartqa" / "test"
    (chart_dir / "png").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(chart_dir / "png" / "c1.png")
    (chart_dir / "test_human.json").write_text(json.dumps([{"imgname": "c1.png", "query": "Max?", "label": "42"}]))
    (rec,) = load_dataset(chart_dir / "test_human.json")
    assert (rec.metric, rec.reference, rec.subset, rec.error) == ("relaxed", "42", "chartqa-test_human", None)


def test_shard_reader_keeps_going_past_a_corrupt_member(tmp_path):
    from vary.data.sample import Sample
    from vary.data.shards import ShardWriter, encode_sample

    writer = ShardWriter(tmp_path / "pages-en-00000.tar")
    good = Sample(key="pages-en-000000", image=Image.new("RGB", (16, 16), "white"), target="hello", task="ocr",
                  lang="en", kind="pages")  # fmt: skip
    writer.add(encode_sample(good))
    writer.add([("pages-en-000001.png", b"not a png"), ("pages-en-000001.json", b'{"target": "x"}')])
    writer.commit()
    assert detect_format(tmp_path) == "shards"
    recs = list(load_dataset(tmp_path))
    assert recs[0].id == "pages-en-000000" and recs[0].subset == "pages-en" and recs[0].reference == "hello"
    assert recs[1].id == "pages-en-000001" and "pages-en-00000.tar" in recs[1].error and recs[1].subset == "pages-en"


def test_get_predictor_specs_and_reading_order():
    assert get_predictor("tesseract:eng").name == "tesseract:eng"
    with pytest.raises(ValueError, match="unknown model spec"):
        get_predictor("/no/such/model/dir")
    import numpy as np

    # two boxes on one line (given right-to-left), one line below; Chinese boxes join without a space
    boxes = np.array([[[60, 10], [90, 10], [90, 30], [60, 30]], [[0, 12], [50, 12], [50, 32], [0, 32]],
                      [[0, 50], [40, 50], [40, 70], [0, 70]], [[45, 50], [80, 50], [80, 70], [45, 70]]], float)  # fmt: skip
    assert join_reading_order(boxes, ["world", "hello", "中文", "文字"]) == "hello world\n中文文字"

    def box(x0, y0, x1, y1):
        return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]

    # a full-width header over two columns whose lines align: columns are read one after the other
    page = np.array([box(0, 0, 300, 20), box(160, 40, 300, 60), box(0, 40, 140, 60), box(0, 70, 140, 90),
                     box(160, 70, 250, 90)], float)  # fmt: skip
    assert join_reading_order(page, ["Title", "R1", "L1", "L2", "R2"]) == "Title\nL1\nL2\nR1\nR2"


def test_runner_with_random_weight_model(tiny_set, tiny_model_dir):
    """A random-weight model (conftest's tiny Vary-tiny) through the inference pipeline: its output is
    gibberish, but every page must be predicted and scored beside the data errors."""
    from vary.infer.pipeline import Pipeline

    predictor = get_predictor(str(tiny_model_dir))
    assert isinstance(predictor.pipeline, Pipeline) and predictor.name == tiny_model_dir.name
    predictor.pipeline.settings = dataclasses.replace(predictor.pipeline.settings, max_new_tokens=32)  # test time
    run = evaluate(load_dataset(tiny_set), [predictor], progress=False)
    rows = run.summary()[predictor.name]
    assert rows["en"]["n"] == 1 and rows["zh"]["n"] == 1 and len(run.data_errors) == 3
    assert [s["status"] for s in run.samples] == ["ok", "ok"], [s["error"] for s in run.samples]
    assert all(type(s["prediction"]) is str for s in run.samples)  # plain str in the JSON, not Result
    assert 0.0 < rows["en"]["edit_distance"] <= 1.0


def test_markdown_pages_are_reported_by_part(tmp_path):
    (tmp_path / "md").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "md" / "page.png")
    (tmp_path / "md" / "page.md").write_text("Some text \\(x^2\\)\n\n| a | b |\n|---|---|")
    (rec,) = load_dataset(tmp_path / "md")
    assert (rec.task, rec.metric) == ("markdown", "markdown")
    run = evaluate([rec], [Echo("Some text")], progress=False)
    row = run.summary()["echo"]["md"]
    assert row["text/f1"] == 1.0 and row["formula/f1"] == 0.0 and row["table/edit_distance"] == 1.0
    report = render_markdown(run)
    assert "| text ED ↓ | text F1 ↑ | formula ED ↓ |" in report
    assert "| echo | 1 |" in report and "| 0.000 | 100.00 | 1.000 | 0.00 | 1.000 | 0.00 |" in report


def test_merge_puts_models_of_separate_runs_in_one_report(tmp_path):
    recs = _records()[:2]
    meta = {"dataset": "set", "limit": None}
    base = evaluate(recs, [OcrOnly()], progress=False, meta={**meta, "model_specs": ["ocr-only"]})
    new = evaluate(recs, [Echo("hello world")], progress=False, meta={**meta, "model_specs": ["echo"]})
    write_outputs(base, tmp_path / "a")
    write_outputs(new, tmp_path / "b")
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "merge",
            str(tmp_path / "a/results.json"),
            str(tmp_path / "b/results.json"),
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert result.exit_code == 0, result.output
    merged = load_run(tmp_path / "m/results.json")
    s = merged.summary()
    assert set(s) == {"ocr-only", "echo"} and s["echo"]["vqa"]["anls"] == 1.0 and s["ocr-only"]["vqa"]["n"] == 0
    assert merged.meta["model_specs"] == ["ocr-only", "echo"] and "| echo |" in (tmp_path / "m/report.md").read_text()
    # the same model twice, or runs on different data, are refused with the reason
    assert (
        CliRunner()
        .invoke(app, ["eval", "merge", str(tmp_path / "b/results.json")] * 2 + ["--out", str(tmp_path / "x")])
        .exit_code
        == 2
    )
    other = evaluate(recs, [Echo("x")], progress=False, meta={"dataset": "other", "limit": None})
    with pytest.raises(ValueError, match="different datasets"):
        merge_runs([base, other])
