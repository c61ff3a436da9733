"""pages: synthetic dense-text document pages (no PDF needed), English or Chinese.

A page is a title (sometimes), then headings, paragraphs and lists flowed through one or two columns
until the page is full, plus an optional running header and page number; fonts, sizes, margins,
spacing, alignment, ink and paper tones vary per sample.

Target = the text exactly as drawn, in reading order (header, then each column top to bottom, then the
footer). Line-break policy, shared with the pdf generator:
- every drawn line ends with "\n" (wrapped lines are not re-joined; no hyphenation is ever added);
- blocks (title, heading, paragraph, list item, header, footer) are separated by one blank line, so
  "\n\n"; a paragraph that continues in the next column stays one block;
- indentation and justification spacing are not represented: words are separated by one space
  (English) or nothing (Chinese), list bullets and heading numbers are part of the text.
Images are grayscale ("L"), height `size`, width size * U(0.70, 1.0) (A4 is 0.71, US letter 0.77).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFont

from vary.data.fonts import draw_text, find_fonts, load_font, text_width
from vary.data.sample import Sample
from vary.data.text import TextCorpus

_NO_LINE_START = set("，。、；：！？）》」』”’,.;:!?)%")  # kinsoku: never begin a Chinese line with these
_ZH_NUMERALS = "一二三四五六七八九十"


def wrap_words(
    font: ImageFont.FreeTypeFont, text: str, first_width: float, rest_width: float | None = None
) -> list[str]:
    """Greedy line breaking at spaces; a token longer than a line (a URL, a long number) is split."""
    rest_width = first_width if rest_width is None else rest_width
    space = text_width(font, " ")
    lines: list[str] = []
    line: list[str] = []
    used, limit = 0.0, first_width
    for word in text.split():
        w = text_width(font, word)
        if line and used + space + w > limit:
            lines.append(" ".join(line))
            line, used, limit = [], 0.0, rest_width
        if w > limit:
            *full, word = _split_chars(font, word, min(first_width, rest_width))
            for piece in full:
                lines.append(" ".join([*line, piece]))
                line, used, limit = [], 0.0, rest_width
            w = text_width(font, word)
        used += (space if line else 0.0) + w
        line.append(word)
    if line:
        lines.append(" ".join(line))
    return lines


def _split_chars(font, word: str, width: float) -> list[str]:
    pieces, cur = [], ""
    for ch in word:
        if cur and text_width(font, cur + ch) > width:
            pieces.append(cur)
            cur = ""
        cur += ch
    return pieces + [cur]


def wrap_chars(
    font: ImageFont.FreeTypeFont, text: str, first_width: float, rest_width: float | None = None
) -> list[str]:
    """Line breaking for Chinese: any character boundary, but a line never starts with closing punctuation."""
    rest_width = first_width if rest_width is None else rest_width
    lines, start, used, limit = [], 0, 0.0, first_width
    for i, ch in enumerate(text):
        w = text_width(font, ch)
        if used + w > limit and i > start and ch not in _NO_LINE_START:
            lines.append(text[start:i])
            start, used, limit = i, 0.0, rest_width
        used += w
    if start < len(text):
        lines.append(text[start:])
    return lines


@dataclass
class _Style:
    """Everything random about one page's look, drawn once per sample."""

    width: int
    height: int
    margins: tuple[int, int, int, int]  # left, top, right, bottom
    columns: int
    gutter: int
    body: ImageFont.FreeTypeFont
    bold: ImageFont.FreeTypeFont
    body_px: int
    leading: float  # line pitch / font size
    block_gap: float  # extra space between blocks, in lines
    justify: bool
    indent: bool
    ink: int
    paper: int
    fonts: tuple[str, str]


@dataclass
class _Block:
    kind: str  # heading, para, item
    font: ImageFont.FreeTypeFont
    lines: list[str]
    indent: float = 0.0  # first line
    hang: float = 0.0  # later lines (list items hang under their text, not their bullet)
    continued: bool = False  # already begun in the previous column


class PagesGenerator:
    name = "pages"
    langs = ("en", "zh")

    def __init__(
        self,
        count: int | None,
        lang: str = "en",
        size: int = 1024,
        columns: str | int | None = None,
        corpus_dir: str | Path | None = None,
        font_style: str | None = None,
    ):
        if count is None:
            raise ValueError("pages needs --count (it makes pages from nothing, there is no input folder)")
        self.count, self.lang, self.size = int(count), lang, int(size)
        self.columns = int(columns) if columns not in (None, "") else None
        if self.columns not in (None, 1, 2):
            raise ValueError(f"pages: columns must be 1 or 2, got {columns!r}")
        self.corpus = TextCorpus(lang, Path(corpus_dir) if corpus_dir else None)
        self.font_style = font_style
        regular = "regular" + (f"-{font_style}" if font_style else "")
        self.body_fonts = find_fonts(lang, regular)
        self.bold_fonts = find_fonts(lang, "bold" + (f"-{font_style}" if font_style else ""))

    def __len__(self) -> int:
        return self.count

    def describe(self) -> dict:
        return {"body_fonts": [p.name for p in self.body_fonts], "bold_fonts": [p.name for p in self.bold_fonts]}

    # ---- sample -----------------------------------------------------------------------------------
    def make(self, index: int, rng: random.Random) -> Sample:
        st = self._style(rng)
        image = Image.new("L", (st.width, st.height), st.paper)
        blocks: list[list[str]] = []  # reading order; each block = its drawn lines

        left, top, right, bottom = st.margins
        pitch = st.body_px * st.leading
        small = load_font(Path(st.fonts[0]), max(6, int(st.body_px * 0.8)))
        if rng.random() < 0.3:  # running header
            header = self.corpus.title(rng)
            draw_text(image, (left, top), header, small, st.ink)
            blocks.append([header])
            top += int(pitch * 2)
        footer = None
        if rng.random() < 0.6:  # page number, drawn last in reading order
            footer = str(rng.randint(1, 400))
            bottom += int(pitch * 2)
            fx = (st.width - text_width(small, footer)) / 2
            draw_text(image, (fx, st.height - bottom + pitch), footer, small, st.ink)

        y = top
        if rng.random() < 0.5:  # title across all columns
            y = self._title(image, rng, st, blocks, left, y, st.width - left - right)
        col_w = (st.width - left - right - st.gutter * (st.columns - 1)) / st.columns
        queue: list[_Block] = []  # a block cut at the bottom of a column continues in the next one
        for col in range(st.columns):
            x = left + col * (col_w + st.gutter)
            queue = self._fill_column(image, rng, st, blocks, x, y, col_w, st.height - bottom, queue)
        if footer is not None:
            blocks.append([footer])
        target = "\n\n".join("\n".join(lines) for lines in blocks if lines)
        meta = {"fonts": [Path(f).name for f in st.fonts], "font_px": st.body_px, "columns": st.columns}
        return Sample(key="", image=image, target=target, task="ocr", lang=self.lang, kind=self.name, meta=meta)

    def _style(self, rng: random.Random) -> _Style:
        h = self.size
        w = int(h * rng.uniform(0.70, 1.0))
        # Even sizes only: fewer (font, size) pairs keep the glyph caches small and warm.
        body_px = max(6, 2 * round(h * rng.uniform(0.0065, 0.011)))
        body_path, bold_path = rng.choice(self.body_fonts), rng.choice(self.bold_fonts)
        margin = lambda: int(w * rng.uniform(0.04, 0.11))  # noqa: E731
        columns = self.columns or (2 if rng.random() < 0.35 else 1)
        return _Style(
            width=w,
            height=h,
            margins=(margin(), margin(), margin(), margin()),
            columns=columns,
            gutter=int(w * rng.uniform(0.03, 0.06)),
            body=load_font(body_path, body_px),
            bold=load_font(bold_path, body_px + 2 * rng.randint(1, max(1, body_px // 6))),
            body_px=body_px,
            leading=rng.uniform(1.15, 1.6),
            block_gap=rng.uniform(0.2, 0.9),
            justify=rng.random() < 0.35,
            indent=rng.random() < 0.5,
            ink=rng.randint(0, 60),
            paper=rng.randint(232, 255),
            fonts=(str(body_path), str(bold_path)),
        )

    # ---- blocks -----------------------------------------------------------------------------------
    def _title(self, image, rng, st: _Style, blocks, x0: float, y: float, width: float) -> float:
        font = load_font(Path(st.fonts[1]), round(st.body_px * rng.uniform(1.5, 2.2)))
        lines = self._wrap(font, self.corpus.title(rng), width)[:2]
        for line in lines:
            draw_text(image, (x0 + (width - text_width(font, line)) / 2, y), line, font, st.ink)
            y += font.size * 1.3
        blocks.append(lines)
        return y + st.body_px * 1.2

    def _fill_column(self, image, rng, st: _Style, blocks, x0, y, width, y_max, queue: list[_Block]):
        """Draw blocks into one column until it is full; returns the blocks left for the next column."""
        pitch = st.body_px * st.leading
        while True:
            if not queue:
                queue.extend(self._new_blocks(rng, st, width))
            block = queue[0]
            line_pitch = block.font.size * st.leading
            drawn = []
            for line in block.lines:
                if y + line_pitch > y_max:
                    break
                indent = block.indent if not (block.continued or drawn) else block.hang
                last = len(drawn) == len(block.lines) - 1
                justify = st.justify and block.kind == "para" and not last
                self._draw_line(image, st, block.font, line, x0 + indent, y, width - indent, justify)
                drawn.append(line)
                y += line_pitch
            if drawn:
                if block.continued:
                    blocks[-1].extend(drawn)
                else:
                    blocks.append(drawn)
            if len(drawn) < len(block.lines):  # column full
                if not drawn or block.kind == "heading":
                    return []  # an undrawn block or a heading never moves to the next column
                block.lines, block.continued = block.lines[len(drawn) :], True
                return queue
            queue.pop(0)
            y += pitch * (st.block_gap if block.kind != "item" or not queue else 0.15)
            if y + pitch > y_max:
                return []

    def _new_blocks(self, rng, st: _Style, width: float) -> list[_Block]:
        """A heading, a paragraph, or the items of a list (each item its own block)."""
        r = rng.random()
        if r < 0.12:
            text = self._heading_text(rng, rng.randint(1, 9))
            return [_Block("heading", st.bold, self._wrap(st.bold, text, width))]
        if r < 0.24:
            numbered = rng.random() < 0.4
            bullet = rng.choice(["•", "-", "–", "·"])
            items = []
            for i in range(rng.randint(2, 5)):
                mark = (f"（{i + 1}）" if self.lang == "zh" else f"{i + 1}.") if numbered else bullet
                prefix = mark + " "
                hang = text_width(st.body, prefix)
                text = prefix + self.corpus.paragraph(rng, rng.randint(1, 2))
                items.append(_Block("item", st.body, self._wrap(st.body, text, width, width - hang), hang=hang))
            return items
        indent = 2 * st.body_px if st.indent else 0
        text = self.corpus.paragraph(rng, rng.randint(2, 7))
        return [_Block("para", st.body, self._wrap(st.body, text, width - indent, width), indent=indent)]

    def _heading_text(self, rng, number: int) -> str:
        title = self.corpus.title(rng)
        r = rng.random()
        if self.lang == "zh":
            if r < 0.3:
                return f"{_ZH_NUMERALS[(number - 1) % 10]}、{title}"
            if r < 0.5:
                return f"第{number}章 {title}"
            return f"{number}. {title}" if r < 0.7 else title
        if r < 0.35:
            return f"{number}. {title}"
        if r < 0.55:
            return f"{number}.{rng.randint(1, 5)} {title}"
        return title

    def _wrap(self, font, text: str, first_width: float, rest_width: float | None = None) -> list[str]:
        wrap = wrap_chars if self.lang == "zh" else wrap_words
        return wrap(font, text, first_width, rest_width)

    def _draw_line(self, image, st: _Style, font, line: str, x: float, y: float, width: float, justify: bool):
        if justify and self.lang == "en" and line.count(" ") >= 3:
            words = line.split(" ")
            widths = [text_width(font, w) for w in words]
            spare = width - sum(widths)
            if spare / (len(words) - 1) < 3.5 * text_width(font, " "):  # avoid rivers on short lines
                step = spare / (len(words) - 1)
                for word, w in zip(words, widths, strict=True):
                    draw_text(image, (x, y), word, font, st.ink)
                    x += w + step
                return
        draw_text(image, (x, y), line, font, st.ink)
