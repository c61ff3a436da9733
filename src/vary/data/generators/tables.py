"""tables: synthetic English/Chinese tables rendered to images, with markdown and LaTeX targets.

Each sample draws a table (3-14 body rows, 2-7 columns of labels, names, integers, decimals,
percentages, money, dates, years or codes) in one of four rule styles: full grid, booktabs, a rule
under every row, or rules around the header only. The target follows the drawing exactly: column
alignment (numbers right or centred, text left) and the rules appear in both formats:
- markdown (task table_markdown): `| a | b |` rows with an alignment row (`:---`, `:---:`, `---:`);
  rules cannot be expressed in markdown;
- LaTeX (task table_latex): a `tabular` with `|` column separators for the grid style, `\\hline` or
  booktabs `\\toprule/\\midrule/\\bottomrule` where rules are drawn, specials escaped.
Option `format` = markdown | latex | mix (default mix: chosen per sample); both strings are kept in
`meta` so a trainer can switch format without regenerating. No merged or multi-line cells (yet).
Images are grayscale, `size` pixels wide, the table at a random place on a page-like canvas.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from faker import Faker
from PIL import Image, ImageDraw

from vary.data.fonts import draw_text, find_fonts, load_font, text_width
from vary.data.sample import Sample
from vary.data.text import TextCorpus, get_faker, latex_escape

STYLES = ("grid", "booktabs", "rows", "header")
FORMATS = ("markdown", "latex", "mix")


def to_markdown(header: list[str], rows: list[list[str]], align: list[str]) -> str:
    rule = {"l": ":---", "c": ":---:", "r": "---:"}
    cell = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(cell, header)) + " |", "| " + " | ".join(rule[a] for a in align) + " |"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def to_latex(header: list[str], rows: list[list[str]], align: list[str], style: str) -> str:
    spec = "|" + "|".join(align) + "|" if style == "grid" else "".join(align)
    top, mid, bottom = (r"\toprule", r"\midrule", r"\bottomrule") if style == "booktabs" else (r"\hline",) * 3
    row = lambda cells: " & ".join(latex_escape(c) for c in cells) + r" \\"  # noqa: E731
    lines = [rf"\begin{{tabular}}{{{spec}}}", top, row(header), mid]
    for i, r in enumerate(rows):
        lines.append(row(r))
        if style in ("grid", "rows") and i < len(rows) - 1:
            lines.append(r"\hline")
    lines += [bottom, r"\end{tabular}"]
    return "\n".join(lines)


@dataclass
class _Column:
    kind: str  # label, name, int, float, pct, money, date, year, code
    align: str  # l, c, r
    decimals: int = 1


class TableGenerator:
    name = "tables"
    langs = ("en", "zh")

    def __init__(
        self,
        count: int | None,
        lang: str = "en",
        size: int = 1024,
        format: str = "mix",  # noqa: A002 - the option's public name
        style: str | None = None,
        corpus_dir: str | Path | None = None,
    ):
        if count is None:
            raise ValueError("tables needs --count (it makes tables from nothing, there is no input folder)")
        if format not in FORMATS:
            raise ValueError(f"tables: format must be one of {FORMATS}, got {format!r}")
        if style not in (None, *STYLES):
            raise ValueError(f"tables: style must be one of {STYLES}, got {style!r}")
        self.count, self.lang, self.size, self.format, self.style = int(count), lang, int(size), format, style
        self.corpus = TextCorpus(lang, Path(corpus_dir) if corpus_dir else None)
        self.regular = find_fonts(lang, "regular")
        self.bold = find_fonts(lang, "bold")

    def __len__(self) -> int:
        return self.count

    def describe(self) -> dict:
        return {"fonts": [p.name for p in self.regular + self.bold]}

    # ---- cell contents -----------------------------------------------------------------------------
    def _columns(self, rng: random.Random, n: int) -> list[_Column]:
        first = _Column(rng.choice(["label", "label", "name", "date", "year"]), "l")
        numeric = ["int", "float", "pct", "money", "int", "float"]
        cols = [first]
        for _ in range(n - 1):
            kind = rng.choice(numeric + ["label", "date", "code", "name"])
            align = "l" if kind in ("label", "name", "code") else rng.choice("rrc")
            align = align if kind not in ("date", "year") else rng.choice("lc")
            cols.append(_Column(kind, align, decimals=rng.randint(1, 3)))
        return cols

    def _cell(self, rng: random.Random, fake: Faker, col: _Column) -> str:
        zh, kind = self.lang == "zh", col.kind
        if kind == "label":
            words = self.corpus.words(rng, rng.randint(1, 2 if zh else 3))
            text = "".join(words) if zh else " ".join(words)
            return text[:1].upper() + text[1:]
        if kind == "name":
            return fake.name()
        if kind == "int":
            return f"{rng.randint(0, 10 ** rng.randint(1, 6)):,}" if rng.random() < 0.5 else str(rng.randint(0, 9999))
        if kind == "float":
            return f"{rng.uniform(-100, 1000):.{col.decimals}f}"
        if kind == "pct":
            return f"{rng.uniform(0, 100):.1f}%"
        if kind == "money":
            return (
                (f"¥{rng.uniform(0, 99999):,.2f}" if zh else f"${rng.uniform(0, 99999):,.2f}")
                if rng.random() < 0.8
                else "-"
            )
        if kind == "date":
            d = fake.date_between("-30y", "+1y")
            return f"{d.year}年{d.month}月{d.day}日" if zh else d.isoformat()
        if kind == "year":
            return str(rng.randint(1950, 2030))
        return f"{rng.choice('ABCDEFGHKMPRSTX')}{rng.choice(['-', '', '.'])}{rng.randint(1, 999):03d}"  # code

    def _header(self, rng: random.Random, col: _Column) -> str:
        words = self.corpus.words(rng, rng.randint(1, 2))
        text = "".join(words) if self.lang == "zh" else " ".join(words).title()
        if col.kind == "pct" and rng.random() < 0.5:
            text += " (%)" if self.lang == "en" else "（%）"
        return text

    # ---- sample -----------------------------------------------------------------------------------
    def make(self, index: int, rng: random.Random) -> Sample:
        fake = get_faker("zh_CN" if self.lang == "zh" else "en_US")
        fake.seed_instance(rng.getrandbits(32))
        n_cols, n_rows = rng.randint(2, 7), rng.randint(3, 14)
        cols = self._columns(rng, n_cols)
        header = [self._header(rng, c) for c in cols]
        rows = [[self._cell(rng, fake, c) for c in cols] for _ in range(n_rows)]
        style = self.style or rng.choice(STYLES)

        W = self.size
        px = max(6, 2 * round(W * rng.uniform(0.0075, 0.015)))  # even sizes: fewer glyph caches
        body_path, bold_path = rng.choice(self.regular), rng.choice(self.bold)
        body = load_font(body_path, px)
        head = load_font(bold_path, px) if rng.random() < 0.6 else body
        pad_x, pad_y = round(px * rng.uniform(0.5, 1.2)), round(px * rng.uniform(0.25, 0.6))
        margin = round(W * rng.uniform(0.03, 0.08))

        # Column widths; drop right-most columns until the table fits the canvas width.
        def col_width(j: int) -> float:
            return max([text_width(head, header[j])] + [text_width(body, r[j]) for r in rows]) + 2 * pad_x

        widths = [col_width(j) for j in range(len(cols))]
        while len(cols) > 2 and sum(widths) > W - 2 * margin:
            cols, header, widths = cols[:-1], header[:-1], widths[:-1]
            rows = [r[:-1] for r in rows]
        row_h = round(px * 1.25 + 2 * pad_y)
        H = max(int(W * rng.uniform(0.4, 1.0)), (len(rows) + 1) * row_h + 2 * margin)
        if H > W:  # too many rows for a square page: keep the ones that fit
            rows = rows[: max(1, (W - 2 * margin) // row_h - 1)]
            H = W
        table_w, table_h = round(sum(widths)), (len(rows) + 1) * row_h

        paper, ink = rng.randint(236, 255), rng.randint(0, 50)
        image = Image.new("L", (W, H), paper)
        draw = ImageDraw.Draw(image)
        x0 = rng.randint(margin, max(margin, W - margin - table_w))
        y0 = rng.randint(margin, max(margin, H - margin - table_h))
        if rng.random() < 0.35:  # shaded header band
            draw.rectangle([x0, y0, x0 + table_w, y0 + row_h], fill=max(0, paper - rng.randint(20, 45)))
        for i, cells in enumerate([header, *rows]):
            y, x = y0 + i * row_h, x0
            font = head if i == 0 else body
            for j, text in enumerate(cells):
                tw = text_width(font, text)
                a = cols[j].align
                tx = x + pad_x if a == "l" else (x + widths[j] - pad_x - tw if a == "r" else x + (widths[j] - tw) / 2)
                draw_text(image, (tx, y + pad_y), text, font, ink)
                x += widths[j]
        self._rules(draw, style, x0, y0, widths, row_h, len(rows) + 1, ink, thick=max(1, round(px / 12)))

        align = [c.align for c in cols]
        markdown, latex = to_markdown(header, rows, align), to_latex(header, rows, align, style)
        fmt = self.format if self.format != "mix" else rng.choice(["markdown", "latex"])
        meta = {"style": style, "rows": len(rows), "cols": len(cols), "markdown": markdown, "latex": latex}
        task = "table_markdown" if fmt == "markdown" else "table_latex"
        target = markdown if fmt == "markdown" else latex
        return Sample(key="", image=image, target=target, task=task, lang=self.lang, kind=self.name, meta=meta)

    @staticmethod
    def _rules(draw, style: str, x0, y0, widths, row_h, n_rows, ink, thick) -> None:
        x1 = x0 + round(sum(widths))
        ys = [y0 + i * row_h for i in range(n_rows + 1)]
        hline = lambda y, w=1: draw.line([(x0, y), (x1, y)], fill=ink, width=w)  # noqa: E731
        if style == "booktabs":
            hline(ys[0], thick + 1), hline(ys[1]), hline(ys[-1], thick + 1)
            return
        if style == "header":
            hline(ys[0]), hline(ys[1]), hline(ys[-1])
            return
        for y in ys:  # grid and rows: a rule under every row
            hline(y, thick)
        if style == "grid":
            x = x0
            for w in [0, *widths]:
                x += w
                draw.line([(round(x), ys[0]), (round(x), ys[-1])], fill=ink, width=thick)
