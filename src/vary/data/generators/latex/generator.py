"""`LatexGenerator`: the data-engine generator that puts blocks on one xelatex page and reads its target back."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pymupdf
from PIL import Image

from vary.data.generators.latex.blocks import MARK, Block
from vary.data.generators.latex.content import ContentMaker, estimate_lines, page_lines
from vary.data.generators.latex.extract import extract_file
from vary.data.generators.latex.templates import (
    Template,
    available_templates,
    preamble,
)
from vary.data.generators.latex.xelatex import Xelatex, glyph_checker, read_marks, render_first_page
from vary.data.sample import Sample, SkipSample
from vary.data.text import TextCorpus


class LatexGenerator:
    """LaTeX-rendered pages (generated, or extracted from `input_dir` .tex files); task "markdown"."""

    name = "latex"
    langs = ("en", "zh")

    def __init__(
        self,
        count: int | None,
        lang: str = "en",
        size: int = 1024,
        input_dir: str | Path | None = None,
        templates: str | list[str] | tuple[str, ...] | None = None,
        corpus_dir: str | Path | None = None,
        xelatex: str = "xelatex",
        timeout: float | str = 60.0,
    ):
        if lang not in self.langs:
            raise ValueError(f"latex: lang must be 'en' or 'zh', got {lang!r}")
        if count is None and input_dir is None:
            raise ValueError("latex: --count is required for generated pages (or give an input folder of .tex files)")
        self.lang, self.size = lang, int(size)
        self.tex = Xelatex(xelatex, float(timeout))
        names = [t.strip() for t in templates.split(",")] if isinstance(templates, str) else templates
        self.templates = available_templates(names)
        if not self.templates:
            raise RuntimeError(
                f"latex: none of the templates {names or 'all'} has its fonts installed; run scripts/setup.sh"
            )
        self.corpus = TextCorpus(lang, corpus_dir=corpus_dir)
        self.files: list[Path] = []
        self.input_dir = Path(input_dir) if input_dir is not None else None
        if self.input_dir is not None:
            if not self.input_dir.is_dir():
                raise FileNotFoundError(f"latex: input_dir {self.input_dir} is not a folder")
            self.files = sorted(p for p in self.input_dir.rglob("*.tex") if p.is_file())
            if not self.files:
                raise ValueError(f"latex: no .tex files under {self.input_dir}")
        # from a folder: one sample per file unless a count asks for more (files are revisited) or fewer
        self.count = int(count) if count is not None else len(self.files)

    def describe(self) -> dict:
        return {"templates": [t.name for t in self.templates], "input_files": len(self.files)}

    def __len__(self) -> int:
        return self.count

    def make(self, index: int, rng: random.Random) -> Sample:
        template = rng.choice(self.templates)
        budget = page_lines(template, self.lang) * rng.uniform(0.6, 1.0)
        meta: dict = {"template": template.name}
        if self.input_dir is None:
            maker = ContentMaker(self.corpus, self.lang, rng, template, glyph_checker(template.cjk_font))
            blocks = maker.page(budget)
        else:
            path = self.files[index % len(self.files)]
            meta["source"] = str(path.relative_to(self.input_dir))
            blocks = self._from_file(path, rng, template, budget, first_visit=index < len(self.files))
        with tempfile.TemporaryDirectory(prefix="vary-latex-") as tmp:
            blocks, image, compiles = self._fit(blocks, template, Path(tmp))
        meta.update(blocks=len(blocks), compiles=compiles)
        return Sample(
            key=f"{self.name}-{self.lang}-{index:08d}",
            image=image,
            target="\n\n".join(b.md for b in blocks),
            task="markdown",
            lang=self.lang,
            kind=self.name,
            meta=meta,
        )

    def _from_file(
        self, path: Path, rng: random.Random, template: Template, budget: float, first_visit: bool
    ) -> list[Block]:
        """Consecutive blocks of one file: from its start on the first pass, from a random block after."""
        found = extract_file(path, path.stat().st_mtime_ns)
        if isinstance(found, str):
            raise SkipSample(f"latex: {found}")
        start = 0 if first_visit else rng.randrange(len(found))
        blocks, used = [], 0.0
        for block in found[start:]:
            if used >= budget:
                break
            blocks.append(block)
            used += estimate_lines(block, template, self.lang)
        return blocks

    def _document(self, blocks: list[Block], template: Template) -> str:
        head, body = [], []
        for i, block in enumerate(blocks):
            tex = block.tex.replace(MARK, rf"\varymark{{{i}}}")
            if i == 0 and block.kind == "heading" and block.md.startswith("# "):
                head.append(tex)  # the document title spans both columns
            else:  # a display continues the paragraph before it, as in real documents
                body.append(("\n" if block.kind == "display" else "\n\n") + tex)
        text = "".join(body)
        if template.columns > 1:
            text = f"\n\\begin{{multicols}}{{{template.columns}}}{text}\n\\end{{multicols}}"
        return f"{preamble(template, self.lang)}\n\\begin{{document}}\n{''.join(head)}{text}\n\\end{{document}}\n"

    def _fit(self, blocks: list[Block], template: Template, workdir: Path) -> tuple[list[Block], Image.Image, int]:
        """Compile; if the content spills over, keep the blocks that ended on page 1 and compile again."""
        pdf = self.tex.compile(self._document(blocks, template), workdir)
        with pymupdf.open(pdf) as doc:
            pages = doc.page_count
        if pages == 1:
            return blocks, render_first_page(pdf, self.size)[0], 1
        marks = read_marks(workdir / "page.marks")
        keep = 0
        while keep < len(blocks) and marks.get(keep) == 1:
            keep += 1
        if keep == 0:
            raise SkipSample(f"latex: the first block does not fit on one page ({template.name})")
        blocks = blocks[:keep]
        pdf = self.tex.compile(self._document(blocks, template), workdir)
        image, pages = render_first_page(pdf, self.size)
        if pages != 1:
            raise SkipSample(f"latex: still {pages} pages after trimming to {keep} blocks ({template.name})")
        return blocks, image, 2
