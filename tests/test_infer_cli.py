"""`vary ocr` end to end on the tiny random-weight model: pages counted, files written, formats valid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_infer_documents import TEXT_AS_PNG, make_corrupt_pdf, make_pdf, make_png, make_png_bomb
from vary.cli import app
from vary.infer import cli as infer_cli

FAST = ["--max-new-tokens", "24"]


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "report.pdf").write_bytes(make_pdf(4))
    (tmp_path / "photo.png").write_bytes(make_png())
    return tmp_path


def invoke(*args: str):
    return CliRunner().invoke(app, ["ocr", *map(str, args)])


def test_pdf_and_image_to_files(inputs, tiny_model_dir):
    out = inputs / "out"
    result = invoke(inputs / "report.pdf", inputs / "photo.png", "--model", tiny_model_dir, "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["photo.txt", "report-p0001.txt", "report-p0002.txt", "report-p0003.txt", "report-p0004.txt"]
    assert "5 page(s)" in result.stderr


def test_page_range_and_markdown(inputs, tiny_model_dir):
    out = inputs / "md"
    result = invoke(inputs / "report.pdf", "--pages", "2-3", "--task", "markdown", "--model", tiny_model_dir,
                    "--out", out, *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["report-p0002.md", "report-p0003.md"]


def test_chart_writes_valid_json_per_page(inputs, tiny_model_dir):
    out = inputs / "charts"
    result = invoke(inputs / "report.pdf", "--pages", "1,4", "--task", "chart", "--model", tiny_model_dir,
                    "--out", out, *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert [r["page"] for r in records] == [1, 4]
    for record in records:
        assert record["source"].endswith("report.pdf") and record["task"] == "chart"
        assert isinstance(record["text"], str) and isinstance(record["truncated_by_loop_guard"], bool)
        # random weights write no dict: chart is null and error says why; a parsed dict would be here
        assert record["chart"] is None and "python-dict" in record["error"]


def test_stdout_has_one_block_per_page(inputs, tiny_model_dir):
    result = invoke(inputs / "report.pdf", inputs / "photo.png", "--model", tiny_model_dir, *FAST)
    assert result.exit_code == 0, result.output
    headers = [line for line in result.stdout.splitlines() if line.startswith("==> ")]
    assert headers[0].endswith("report.pdf page 1 <==") and headers[-1].endswith("photo.png <==")
    assert len(headers) == 5


def test_single_image_prints_just_the_text(inputs, tiny_model_dir):
    from vary.infer.pipeline import Pipeline

    expected = Pipeline.from_pretrained(tiny_model_dir).ocr(inputs / "photo.png", max_new_tokens=24)
    result = invoke(inputs / "photo.png", "--model", tiny_model_dir, *FAST)
    assert result.exit_code == 0, result.output
    assert result.stdout == expected + "\n"


def test_ask_needs_a_question(inputs, tiny_model_dir):
    result = invoke(inputs / "photo.png", "--task", "ask", "--model", tiny_model_dir)
    assert result.exit_code == 2 and "--task ask needs --question" in result.output


def test_without_a_model_says_how_to_get_one(inputs, monkeypatch):
    monkeypatch.setattr(infer_cli, "bundled_model_dir", lambda: None)
    result = invoke(inputs / "photo.png")
    assert result.exit_code == 2
    assert "no model folder: pass --model DIR" in result.stderr and "vary train" in result.stderr


def test_bundled_model_is_the_default(inputs, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(infer_cli, "bundled_model_dir", lambda: tiny_model_dir)
    result = invoke(inputs / "photo.png", *FAST)
    assert result.exit_code == 0, result.output
    assert f"model: {tiny_model_dir.name} ({tiny_model_dir})" in " ".join(result.stderr.split())


def test_the_cli_names_the_bundled_model_by_its_card(inputs, tiny_model_dir, monkeypatch, tmp_path):
    import shutil

    import vary.assets

    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (folder / "MODEL_CARD.md").write_text("# vary-reader-test: a card\n")
    monkeypatch.setattr(vary.assets, "MODEL_DIR", folder)
    monkeypatch.setattr(infer_cli, "bundled_model_dir", lambda: folder)
    result = invoke(inputs / "photo.png", *FAST)
    assert result.exit_code == 0, result.output
    assert "model: bundled:vary-reader-test" in result.stderr


@pytest.mark.parametrize(
    "name, data, message",
    [("scan.pdf", make_corrupt_pdf(), "scan.pdf: corrupt PDF"),
     ("locked.pdf", make_pdf(2, encrypt=True), "locked.pdf: the PDF is password-protected"),
     ("empty.png", b"", "empty.png: empty file"),
     ("notes.png", TEXT_AS_PNG, "notes.png: neither an image nor a PDF"),
     ("huge.png", make_png_bomb(), "100 megapixels is over the 64 MP limit")],
)  # fmt: skip
def test_bad_inputs_fail_with_the_file_named(tmp_path, tiny_model_dir, name, data, message):
    (tmp_path / name).write_bytes(data)
    result = invoke(tmp_path / name, "--model", tiny_model_dir)
    assert result.exit_code == 1
    assert message in " ".join(result.stderr.split())  # rich may wrap long lines


def test_page_out_of_range(inputs, tiny_model_dir):
    result = invoke(inputs / "report.pdf", "--pages", "3-9", "--model", tiny_model_dir)
    assert result.exit_code == 1 and "page 9 is out of range" in result.stderr


def test_readme_sample_page(tiny_model_dir):
    """The README's first command, on the page that ships in examples/ (with a model given)."""
    sample = Path(__file__).resolve().parents[1] / "examples" / "sample_page.png"
    result = invoke(sample, "--model", tiny_model_dir, *FAST)
    assert result.exit_code == 0, result.output
    assert "1 page(s)" in result.stderr
