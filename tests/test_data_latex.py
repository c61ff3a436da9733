"""The latex generator: xelatex pages whose Mathpix-markdown target holds exactly what page 1 shows."""

from __future__ import annotations

import io
import random
import re

import pymupdf
import pytest

from vary.data.generators import get_generator
from vary.data.generators.latex import (
    ContentMaker,
    LatexGenerator,
    Xelatex,
    XelatexNotFoundError,
    extract_blocks,
    glyph_checker,
    math_ok,
    page_lines,
)
from vary.data.generators.latex.templates import TEMPLATES, available_templates
from vary.data.sample import SkipSample
from vary.prompts import TASK_PROMPTS

PAPER = r"""
\documentclass{article}
\newcommand{\R}{\mathbb{R}}
\begin{document}
\section{Introduction}
Deep networks~\cite{a,b} work --- surprisingly well. Let $x_i \in \R^d$ be the inputs % a comment
and \emph{define} the loss in Eq.~\eqref{eq:loss}:
\begin{equation}
\mathcal{L}(\theta) = \frac{1}{N}\sum_{i=1}^{N} \ell(x_i) \label{eq:loss}
\end{equation}
\begin{align}
a &= b + c \\
d &= e \nonumber
\end{align}
\begin{table}[t]\centering\caption{Results.}
\begin{tabular}{l|cc}
\toprule
Method & Acc. & F1 \\
\midrule
Ours & \textbf{95.1} & $0.93$ \\
\bottomrule
\end{tabular}
\end{table}
A paragraph with an \unknownmacro{x} cannot be reproduced and is dropped.

\begin{itemize}
\item First point with $x^2$.
\item Second 50\% point.
\end{itemize}
\end{document}
"""


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]{4,}", text)


@pytest.fixture(scope="module")
def en_generator():
    return LatexGenerator(count=10, lang="en", size=256)


def test_at_least_ten_templates_are_usable_here():
    assert len(TEMPLATES) >= 10
    assert len(available_templates()) >= 10, "fonts missing: run scripts/setup.sh"


def test_english_page_target_is_mathpix_markdown(en_generator):
    sample = en_generator.make(0, random.Random(1))
    assert sample.task == "markdown" and sample.task in TASK_PROMPTS and sample.kind == "latex"
    assert sample.image.mode == "RGB" and max(sample.image.size) == 256
    assert sample.meta["template"] in {t.name for t in TEMPLATES} and sample.meta["compiles"] in (1, 2)
    target = sample.target
    assert "$" not in target.replace(r"\$", "")  # math is \( \) and \[ \], never dollars
    inline = re.findall(r"\\\( (.+?) \\\)", target)
    displays = re.findall(r"^\\\[\n(.+?)\n\\\]$", target, flags=re.S | re.M)
    assert inline or displays
    assert all(math_ok(m, display=False) for m in inline) and all(math_ok(m, display=True) for m in displays)


def test_overfull_content_is_cut_to_what_page_one_shows(en_generator, tmp_path):
    """Twice a page of content: the target keeps the blocks that ended on page 1, and the PDF has them."""
    template = next(t for t in en_generator.templates if t.name == "article-lm")
    rng = random.Random(7)
    maker = ContentMaker(en_generator.corpus, "en", rng, template, glyph_checker(template.cjk_font))
    blocks = maker.page(2 * page_lines(template, "en"))
    kept, image, compiles = en_generator._fit(blocks, template, tmp_path)
    assert compiles == 2 and 0 < len(kept) < len(blocks)
    with pymupdf.open(tmp_path / "page.pdf") as doc:
        assert doc.page_count == 1
        shown = set(words(doc[0].get_text().replace("-\n", "")))
    text_blocks = [b for b in kept if b.kind in ("paragraph", "heading", "list")]
    expected = {w for b in text_blocks for w in words(re.sub(r"\\\(.*?\\\)", " ", b.md))}
    assert expected and len(expected & shown) / len(expected) > 0.97  # hyphenation may split a few words
    dropped = {w for b in blocks[len(kept) :] if b.kind == "paragraph" for w in words(b.md)} - expected
    assert len(dropped & shown) / max(len(dropped), 1) < 0.5  # the cut-off text is not on the page


def test_chinese_page_through_the_registry():
    generator = get_generator("latex", count=2, lang="zh", size=256, templates="article-lm,twocol-sans")
    sample = generator.make(1, random.Random(3))
    assert sample.lang == "zh" and sum("\u4e00" <= c <= "\u9fff" for c in sample.target) > 50
    assert max(sample.image.size) == 256


def test_same_rng_same_png_bytes(en_generator):
    a = png_bytes(en_generator.make(5, random.Random(42)).image)
    assert png_bytes(en_generator.make(5, random.Random(42)).image) == a


def test_extraction_keeps_what_it_can_reproduce():
    blocks = extract_blocks(PAPER, "paper.tex")
    kinds = [b.kind for b in blocks]
    assert kinds == ["heading", "paragraph", "display", "display", "table", "list"]
    md = "\n\n".join(b.md for b in blocks)
    assert blocks[0].md == "## Introduction"
    assert r"\( x_i \in \mathbb{R}^d \)" in md  # user macro expanded
    assert "work \u2014 surprisingly well" in md and "*define*" in md and "comment" not in md
    assert "\\[\n\\begin{aligned}\na &= b + c \\\\\nd &= e\n\\end{aligned}\n\\]" in md
    assert "\\hline" in blocks[4].md and "toprule" not in blocks[4].md and r"\( 0.93 \)" in blocks[4].md
    assert "unknownmacro" not in md and "- Second 50% point." in md


def test_tex_folder_with_broken_files_skips_them_with_reasons(tmp_path):
    (tmp_path / "good.tex").write_text(PAPER, encoding="utf-8")
    (tmp_path / "unbalanced.tex").write_text("\\begin{document}\\section{Oops {\n text\n\\end{document}")
    (tmp_path / "binary.tex").write_bytes(b"\x00\x01\x02 not tex")
    (tmp_path / "latin1.tex").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "macros_only.tex").write_text("\\begin{document}\\foo{bar}\\baz\n\\end{document}")
    generator = LatexGenerator(count=None, lang="en", size=256, input_dir=tmp_path, templates="article-lm")
    assert len(generator) == 5  # one sample per file
    reasons = {}
    for index, path in enumerate(generator.files):
        try:
            sample = generator.make(index, random.Random(index))
            assert sample.meta["source"] == "good.tex" and sample.target.startswith("## Introduction")
        except SkipSample as e:
            reasons[path.name] = str(e)
    assert set(reasons) == {"unbalanced.tex", "binary.tex", "latin1.tex", "macros_only.tex"}
    assert "unbalanced braces" in reasons["unbalanced.tex"] and "binary" in reasons["binary.tex"]
    assert "UTF-8" in reasons["latin1.tex"] and "no usable" in reasons["macros_only.tex"]
    with pytest.raises(FileNotFoundError, match="not a folder"):
        LatexGenerator(count=None, input_dir=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .tex files"):
        LatexGenerator(count=None, input_dir=tmp_path / "empty")


def test_tex_error_becomes_skip_with_the_first_error_line(tmp_path):
    with pytest.raises(SkipSample, match="Undefined control sequence"):
        Xelatex().compile("\\documentclass{article}\\begin{document}\\nosuchmacro\\end{document}", tmp_path)


def test_missing_xelatex_is_a_clear_error():
    with pytest.raises(XelatexNotFoundError, match="setup.sh"):
        LatexGenerator(count=1, xelatex="xelatex-not-installed")
