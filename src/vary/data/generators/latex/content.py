"""Generated page content (text, formulas, tables, lists) sized to what a template's page holds."""

from __future__ import annotations

import math
import random
import re

from vary.data.generators.latex.blocks import (
    Block,
    Piece,
    display_block,
    heading_block,
    list_block,
    paragraph_block,
    table_block,
    tex_escape,
)
from vary.data.generators.latex.formulas import Formulas
from vary.data.generators.latex.templates import (
    Template,
)
from vary.data.text import TextCorpus


class ContentMaker:
    """Headings, paragraphs, formulas, tables and lists from the corpus, fitted to a page by estimate."""

    def __init__(self, corpus: TextCorpus, lang: str, rng: random.Random, template: Template, glyph_ok):
        self.corpus, self.lang, self.rng, self.template = corpus, lang, rng, template
        self.sep = "" if lang == "zh" else " "
        self.glyph_ok = glyph_ok  # drops characters the page's CJK font cannot draw
        self.formulas = Formulas(rng, lang)

    def _clean(self, text: str) -> str:
        return "".join(c for c in text if self.glyph_ok(c)) if self.lang == "zh" else text

    def heading(self, level: int, number: str = "") -> Block:
        title = self._clean(self.corpus.title(self.rng))
        return heading_block([("text", f"{number} {title}" if number else title)], level)

    def paragraph(self) -> Block:
        r = self.rng
        text = self._clean(self.corpus.paragraph(r, r.randint(2, 5)))
        tokens = text.split(" ") if self.lang == "en" else re.findall(r".{1,6}", text)
        pieces: list[Piece] = [("text", t) for t in tokens if t]
        for _ in range(r.choice((0, 1, 1, 2, 3)) if len(pieces) > 3 else 0):  # inline formulas
            pieces.insert(r.randint(1, len(pieces) - 1), ("math", self.formulas.inline()))
        if len(pieces) > 6 and r.random() < 0.3:  # a bold or italic phrase
            i = r.randrange(1, len(pieces) - 3)
            span = pieces[i : i + r.randint(1, 3)]
            if all(k == "text" for k, _ in span):
                style = "bold" if self.lang == "zh" or r.random() < 0.5 else "italic"
                pieces[i : i + len(span)] = [(style, self.sep.join(t for _, t in span))]
        return paragraph_block(pieces, self.sep)

    def display(self) -> Block:
        latex, rows = self.formulas.display()
        if self.lang == "zh":
            latex = self._clean(latex)
        return display_block(latex, rows)

    def table(self) -> Block:
        r = self.rng
        n_cols = r.randint(2, 4 if self.template.columns > 1 else 6)
        n_rows = r.randint(2, 8)
        short = 4 if self.lang == "zh" else 12

        def word() -> str:
            words = [self._clean(w) for w in self.corpus.words(r, r.choice((1, 1, 2)))]
            text = words[0][:short]
            if len(words) > 1 and len(text) + len(words[1]) < short:
                text += self.sep + words[1]
            return tex_escape(text.strip()) or "-"

        kinds = ["text"] + [r.choice(("int", "float", "float", "percent", "text", "math")) for _ in range(n_cols - 1)]

        def cell(kind: str) -> str:
            if kind == "int":
                return str(r.randint(0, 10 ** r.randint(1, 4)))
            if kind == "float":
                return f"{r.uniform(0, 100):.{r.randint(1, 3)}f}"
            if kind == "percent":
                return f"{r.uniform(0, 100):.1f}\\%"
            if kind == "math" and r.random() < 0.5:
                return rf"\( {self.formulas.atom()} \)"
            return word()

        style = r.choice(("grid", "rules", "open"))
        aligns = ["l"] + [r.choice("lcr") if k in ("text", "math") else r.choice("cr") for k in kinds[1:]]
        spec = "|" + "|".join(aligns) + "|" if style == "grid" else "".join(aligns)
        header = " & ".join((rf"\textbf{{{w}}}" if r.random() < 0.3 else w) for w in (word() for _ in kinds)) + r" \\"
        rows = [" & ".join(cell(k) for k in kinds) + r" \\" for _ in range(n_rows)]
        if style == "grid":
            lines = [r"\hline"] + [x for row in [header, *rows] for x in (row, r"\hline")]
        elif style == "rules":
            lines = [r"\hline", header, r"\hline", *rows, r"\hline"]
        else:
            lines = [header, r"\hline", *rows]
        tabular = f"\\begin{{tabular}}{{{spec}}}\n" + "\n".join(lines) + "\n\\end{tabular}"
        return table_block(tabular, n_rows + 1)

    def items(self) -> Block:
        r = self.rng
        items = []
        for _ in range(r.randint(2, 5)):
            text = self._clean(self.corpus.sentence(r))
            pieces: list[Piece] = [("text", text)]
            if r.random() < 0.3:
                pieces.append(("math", self.formulas.inline()))
            items.append(pieces)
        return list_block(items, numbered=r.random() < 0.4, sep=self.sep)

    def page(self, budget_lines: float) -> list[Block]:
        """Blocks until the estimated height reaches budget_lines."""
        r, blocks, used = self.rng, [], 0.0
        makers = {"paragraph": self.paragraph, "display": self.display, "table": self.table, "list": self.items}
        section = [0, 0]
        numbered = r.random() < 0.6
        if r.random() < 0.3:
            blocks.append(self.heading(1))
        while used < budget_lines:
            last = blocks[-1].kind if blocks else None
            weights = {
                "paragraph": 0.5,
                "display": 0.3 if last == "paragraph" else 0.0,  # formulas follow the text that leads to them
                "table": 0.1 if last != "table" else 0.02,
                "list": 0.05,
                "heading": 0.1 if last not in (None, "heading") else 0.0,
            }
            kind = r.choices(list(weights), list(weights.values()))[0]
            if kind == "heading":
                sub = section[0] > 0 and r.random() < 0.4
                section = [section[0], section[1] + 1] if sub else [section[0] + 1, 0]
                number = ".".join(str(s) for s in section if s) if numbered else ""
                block = self.heading(3 if sub else 2, number)
            else:
                block = makers[kind]()
            blocks.append(block)
            used += estimate_lines(block, self.template, self.lang)
        if blocks[-1].kind == "heading":  # never end a page on a heading
            blocks.pop()
        return blocks


def estimate_lines(block: Block, template: Template, lang: str) -> float:
    """Height of a block in text lines of the template (a deliberately simple model)."""
    line_width_em = template.column_width_pt() / template.font_size
    if block.kind == "heading":
        return 2.5
    if block.kind == "display":
        return 1.6 + 1.3 * block.rows
    if block.kind == "table":
        return 1.8 + 1.15 * block.rows
    gap = 0.6 if template.parskip else 0.1
    if block.kind == "list":
        return math.ceil(block.width_em / (0.9 * line_width_em)) + 0.4 * block.rows + 0.8
    return math.ceil(block.width_em / line_width_em) + gap


def page_lines(template: Template, lang: str) -> float:
    return template.columns * template.text_height_pt() / (1.2 * template.font_size * template.line_spread(lang))
