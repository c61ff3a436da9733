"""Generators: pages, tables, pdf (on PDFs made here, good and bad), natural; fonts and text."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pymupdf
import pytest
from PIL import Image

from vary.data.engine import DataEngineError, GenerateConfig, generate
from vary.data.fonts import FontNotFoundError, find_fonts, load_font
from vary.data.generators import get_generator
from vary.data.generators.pdf import detect_lang
from vary.data.generators.tables import latex_escape
from vary.data.shards import iter_shards
from vary.data.text import TextCorpus
from vary.prompts import NATURE_SENTENCES

CJK = re.compile(r"[\u4e00-\u9fff]")


# ---- text and fonts ----------------------------------------------------------------------------------
def test_text_corpus_deterministic_per_rng_and_language():
    en, zh = TextCorpus("en"), TextCorpus("zh")
    assert en.paragraph(random.Random(1), 3) == en.paragraph(random.Random(1), 3)
    assert en.paragraph(random.Random(1), 3) != en.paragraph(random.Random(2), 3)
    assert not CJK.search(en.paragraph(random.Random(0), 5))
    zh_text = zh.paragraph(random.Random(0), 5)
    assert len(CJK.findall(zh_text)) > 0.7 * len(zh_text)
    assert len(en.words(random.Random(0), 7)) == 7


def test_text_corpus_from_user_folder(tmp_path):
    (tmp_path / "a.txt").write_text("Alpha beta gamma. Delta epsilon zeta! Eta theta iota?", encoding="utf-8")
    corpus = TextCorpus("en", tmp_path)
    assert corpus.sentence(random.Random(0)) in {"Alpha beta gamma.", "Delta epsilon zeta!", "Eta theta iota?"}
    assert set(corpus.words(random.Random(0), 5)) <= set(
        ["Alpha", "beta", "gamma.", "Delta", "epsilon", "zeta!", "Eta", "theta", "iota?"]
    )
    with pytest.raises(FileNotFoundError):
        TextCorpus("en", tmp_path / "missing")


def test_fonts_found_sorted_and_cjk_capable():
    en, zh = find_fonts("en"), find_fonts("zh")
    assert en == sorted(en, key=lambda p: (p.name, str(p))) and zh
    assert all("Bold" in p.name for p in find_fonts("en", "serif-bold"))
    font = load_font(zh[0], 20)
    assert font.getname()[0].endswith("SC")  # Simplified-Chinese face of the collection
    assert font.getbbox("汉")[2] > 10  # a real glyph, not an empty box
    with pytest.raises(ValueError, match="unknown style"):
        find_fonts("en", "gothic")
    assert issubclass(FontNotFoundError, RuntimeError)


# ---- pages -------------------------------------------------------------------------------------------
def _ink_bands(image: Image.Image, paper_margin: int = 60) -> int:
    """Number of horizontal bands of ink (text lines) in a one-column page."""
    a = np.asarray(image.convert("L")).astype(int)
    rows = (a < np.median(a) - paper_margin).any(axis=1)
    return int(np.sum(rows[1:] & ~rows[:-1]) + rows[0])


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_pages_1024_target_is_the_drawn_text(lang):
    """At full size: one band of ink per target line, and the text is in the page's language."""
    generator = get_generator("pages", count=2, lang=lang, size=1024, columns="1")
    for index in range(2):
        sample = generator.make(index, random.Random(f"t{index}"))
        assert sample.image.height == 1024 and 700 <= sample.image.width <= 1024
        lines = [line for line in sample.target.split("\n") if line]
        assert len(lines) > 20 and len(sample.target) > 600  # a dense page
        assert _ink_bands(sample.image) == len(lines)
        assert bool(CJK.search(sample.target)) == (lang == "zh")
        assert sample.task == "ocr" and sample.lang == lang


def test_pages_two_columns_and_determinism():
    generator = get_generator("pages", count=3, lang="en", size=256, columns="2")
    a, b = generator.make(1, random.Random(5)), generator.make(1, random.Random(5))
    assert a.target == b.target and a.image.tobytes() == b.image.tobytes()
    assert a.meta["columns"] == 2
    assert generator.make(1, random.Random(6)).target != a.target


# ---- tables ------------------------------------------------------------------------------------------
def _markdown_cells(md: str) -> list[list[str]]:
    rows = [line.strip().strip("|").split(" | ") for line in md.splitlines()]
    return [[c.strip() for c in r] for i, r in enumerate(rows) if i != 1]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_tables_markdown_and_latex_describe_the_same_table(lang):
    generator = get_generator("tables", count=4, lang=lang, size=512)
    for index in range(4):
        s = generator.make(index, random.Random(index))
        md, tex = s.meta["markdown"], s.meta["latex"]
        assert s.target == (md if s.task == "table_markdown" else tex)
        cells = _markdown_cells(md)
        assert len(cells) == s.meta["rows"] + 1 and all(len(r) == s.meta["cols"] for r in cells)
        body = tex.split("\n")
        assert body[0].startswith(r"\begin{tabular}{") and body[-1] == r"\end{tabular}"
        assert len(re.sub(r"[^lcr]", "", body[0][len(r"\begin{tabular}") :])) == s.meta["cols"]
        tex_rows = [line for line in body if line.endswith(r"\\")]
        assert len(tex_rows) == s.meta["rows"] + 1 and all(r.count(" & ") == s.meta["cols"] - 1 for r in tex_rows)
        assert tex_rows[0] == " & ".join(latex_escape(c) for c in cells[0]) + r" \\"
        assert s.image.width == 512 and s.image.height <= 512


def test_latex_escape():
    assert latex_escape("50% & $3_x #1 {a}") == r"50\% \& \$3\_x \#1 \{a\}"


# ---- pdf ---------------------------------------------------------------------------------------------
def _make_pdf_folder(folder):
    folder.mkdir()
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_text((72, 72), "Left column first line\nLeft column second line", fontsize=11)
    page.insert_text((320, 72), "Right column text", fontsize=11)
    doc.new_page()  # blank page: no text layer
    doc.save(folder / "a_english.pdf")
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "汉字识别测试页面\n第二行中文", fontname="china-s", fontsize=12)
    doc.save(folder / "b_chinese.pdf")
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "secret")
    doc.save(folder / "c_encrypted.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="u", owner_pw="o")
    (folder / "d_corrupt.pdf").write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 4)
    (folder / "e_empty.pdf").write_bytes(b"")
    (folder / "f_notes.txt").write_text("not a pdf")
    (folder / "g_zero_pages.pdf").write_bytes(
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
        b"trailer<</Root 1 0 R>>\n%%EOF\n"
    )
    return folder


def test_pdf_pages_text_order_languages_and_bad_inputs(tmp_path):
    folder = _make_pdf_folder(tmp_path / "pdfs")
    out = tmp_path / "out"
    report = generate(GenerateConfig("pdf", out, lang="mix", input_dir=folder, size=256, progress=False))
    samples = list(iter_shards(out))
    assert [s.meta["page"] for s in samples] == [1, 1]
    en, zh = samples
    assert en.target == "Left column first line\nLeft column second line\n\nRight column text"
    assert en.lang == "en" and zh.lang == "zh" and zh.target.startswith("汉字识别测试页面\n第二行中文")
    assert max(en.image.size) == 256 and en.image.mode == "RGB"
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {x["input"]: x["reason"] for x in manifest["skipped_inputs"]}
    assert set(reasons) == {"c_encrypted.pdf", "d_corrupt.pdf", "e_empty.pdf", "f_notes.txt", "g_zero_pages.pdf"}
    assert "encrypted" in reasons["c_encrypted.pdf"] and "empty" in reasons["e_empty.pdf"]
    assert "not a PDF" in reasons["f_notes.txt"] and "no pages" in reasons["g_zero_pages.pdf"]
    assert "corrupt" in reasons["d_corrupt.pdf"]
    assert [x["reason"] for x in manifest["skipped_samples"]] == [
        "a_english.pdf: page 2: no text layer (scanned or blank page)"
    ]
    assert manifest["counts"] == {"pdf": {"en": 1, "zh": 1}}
    assert len(report.skipped) == 6


def test_missing_input_folder_is_a_clear_error_and_writes_nothing(tmp_path):
    with pytest.raises(DataEngineError, match="does not exist"):
        generate(GenerateConfig("pdf", tmp_path / "out", input_dir=tmp_path / "nope", progress=False))
    with pytest.raises(DataEngineError, match="needs --input-dir"):
        generate(GenerateConfig("pdf", tmp_path / "out", progress=False))
    assert not (tmp_path / "out").exists()
    assert detect_lang("hello 世界") == "zh" and detect_lang("hello world") == "en"


# ---- natural -----------------------------------------------------------------------------------------
def test_natural_demo_photos_and_folder_with_bad_images(tmp_path):
    demo = get_generator("natural", count=3, size=128)
    s = demo.make(0, random.Random(0))
    assert s.target in NATURE_SENTENCES and s.task == "natural" and max(s.image.size) <= 128
    assert s.meta["file"].startswith("skimage:")

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(photos / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(photos / "b.png")
    (photos / "c_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "d_readme.md").write_text("photos")
    out = tmp_path / "out"
    generate(GenerateConfig("natural", out, input_dir=photos, size=64, progress=False))
    samples = list(iter_shards(out))
    assert [s.meta["file"] for s in samples] == ["a.jpg", "b.png"]
    assert samples[0].image.size == (60, 40)  # never enlarged
    manifest = json.loads((out / "manifest.json").read_text())
    assert [x["input"] for x in manifest["skipped_inputs"]] == ["d_readme.md"]
    assert "c_broken.jpg: unreadable image" in manifest["skipped_samples"][0]["reason"]
    with pytest.raises(DataEngineError, match="makes languages en"):
        generate(GenerateConfig("natural", tmp_path / "o2", count=1, lang="zh", progress=False))
