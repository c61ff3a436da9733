"""blocks: short text blocks (1 to 8 lines) on a square image, English or Chinese; task "ocr".

The easy end of the OCR curriculum, and what the bundled model is trained and scored on: a few lines of
running text in one body font, large enough to read at a small model's input size (512 px by default).
Line-break policy is the pages generator's: every drawn line ends with "\\n" except the last, words are
separated by one space (English) or nothing (Chinese), no hyphenation is ever added.

Options (all `--option key=value`):
  lines      "1-8"        how many lines, uniform in the range (fewer when the font is too tall)
  font       "0.05-0.08"  body size as a fraction of `size` (0.05-0.08 of 512 px = 26-41 px)
  chars      none         e.g. "1-3": one line of that many characters instead (a reading curriculum's start)
  words      none         English, e.g. "2-4": one line of that many words instead, at the drawn type size shrunk
                          until they fit the width (words dropped from the end below the smallest `font`), so
                          a line of several words comes at every size, not only in small type
  zh_chars   none         Chinese: write only with the N most frequent characters (see TextCorpus)
  font_style none         e.g. "sans" or "serif-bold" (see vary.data.fonts.find_fonts)
  place      "margin"     "anywhere": move the block to a random spot where it fits (drawn after the text, so the
                          text is the same as with "margin"). With text always at the top-left margin a model
                          learns to read only there (reports/training/nano-ocr/README.md)
  text       "generator"  "prose": real prose from Debian packages (vary.data.prose: fortunes, fortunes-zh,
                          python3-doc) instead of the built-in word generator
  split      none         "train" or "heldout": the partition of the prose passages (by a hash of each passage)
                          and of the fonts (vary.data.fonts.HELDOUT_FONTS) to draw from; with text=prose it
                          defaults to "train", so held-out passages and faces are only ever drawn on request
  boxes      false        true: also record meta["char_boxes"], one [left, top, right, bottom] in image pixels
                          per character of the target, newlines left out (glyph ink; whitespace: its advance).
                          For objectives that need to know where each character is (vary.train.vision_warmup).
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

from vary.data.fonts import draw_text, find_fonts, font_covers, load_font, text_width
from vary.data.generators import option_flag
from vary.data.generators.pages import wrap_chars, wrap_words
from vary.data.prose import text_source
from vary.data.sample import Sample


def _span(text: str | tuple, cast) -> tuple:
    """ "1-8" -> (1, 8); "0.05-0.08" -> (0.05, 0.08); a single value gives (v, v)."""
    if isinstance(text, tuple | list):
        lo, hi = text
    else:
        lo, _, hi = str(text).partition("-")
        hi = hi or lo
    lo, hi = cast(lo), cast(hi)
    if not 0 < lo <= hi:
        raise ValueError(f"blocks: bad range {text!r} (want 'low-high' with 0 < low <= high)")
    return lo, hi


class BlocksGenerator:
    name = "blocks"
    langs = ("en", "zh")

    def __init__(
        self,
        count: int | None,
        lang: str = "en",
        size: int = 512,
        lines: str = "1-8",
        font: str = "0.05-0.08",
        zh_chars: int | str | None = None,
        chars: str | None = None,
        words: str | None = None,
        font_style: str | None = None,
        place: str = "margin",
        boxes: bool | str = False,
        corpus_dir: str | Path | None = None,
        text: str = "generator",
        split: str | None = None,
    ):
        if count is None:
            raise ValueError("blocks needs --count (it makes text from nothing, there is no input folder)")
        self.count, self.lang, self.size = int(count), lang, int(size)
        self.lines = _span(lines, int)
        self.font = _span(font, float)
        self.chars = _span(chars, int) if chars not in (None, "", "none") else None
        self.words = _span(words, int) if words not in (None, "", "none") else None
        if self.words and (lang != "en" or self.chars):
            raise ValueError("blocks: words= is for English (words are split at spaces) and excludes chars=")
        self.boxes = option_flag(boxes, "boxes")
        if place not in ("margin", "anywhere"):
            raise ValueError(f"blocks: place must be 'margin' or 'anywhere', got {place!r}")
        self.anywhere = place == "anywhere"
        if self.font[1] > 0.6:
            raise ValueError(f"blocks: font {font!r} is a fraction of the image side; keep it under 0.6")
        zh_chars = int(zh_chars) if zh_chars not in (None, "", "none") else None
        self.corpus, split = text_source("blocks", lang, text, split, corpus_dir, zh_chars)
        self.text, self.split = text, split
        self.fonts = find_fonts(lang, "regular" + (f"-{font_style}" if font_style else ""), split=split)

    def __len__(self) -> int:
        return self.count

    def describe(self) -> dict:
        return {"fonts": [p.name for p in self.fonts], "lines": list(self.lines), "font": list(self.font),
                "text": self.text, "split": self.split}  # fmt: skip

    def make(self, index: int, rng: random.Random) -> Sample:
        side = self.size
        font_path = rng.choice(self.fonts)
        px = max(8, round(side * rng.uniform(*self.font)))
        font = load_font(font_path, px)
        pitch = px * rng.uniform(1.15, 1.6)
        left, top = side * rng.uniform(0.03, 0.08), side * rng.uniform(0.03, 0.12)
        width = side - left - side * rng.uniform(0.03, 0.08)
        fit = max(1, int((side * 0.97 - top - px) // pitch) + 1)
        n_lines = min(rng.randint(*self.lines), fit)

        wrap = wrap_chars if self.lang == "zh" else wrap_words
        lines: list[str] = []
        if self.chars is not None:  # a few characters cut from running text, kept to what fits one line
            text = self._paragraph(font_path, 1, rng)
            start = rng.randrange(len(text))
            lines = [wrap(font, text[start : start + rng.randint(*self.chars)].strip() or text[0], width)[0]]
            n_lines = 1
        if self.words is not None:
            font, line = self._fitted_words(font_path, px, width, rng)
            px, lines, n_lines = font.size, [line], 1
        while len(lines) < n_lines:  # a paragraph may wrap to fewer lines than asked: add another
            lines += wrap(font, self._paragraph(font_path, rng.randint(1, 3), rng), width)
        lines = lines[:n_lines]
        if self.anywhere:
            left, top = self._anywhere(font, lines, pitch, rng)

        paper, ink = rng.randint(225, 255), rng.randint(0, 70)
        image = Image.new("L", (side, side), paper)
        boxes: list[list[int]] | None = [] if self.boxes else None
        for i, line in enumerate(lines):
            draw_text(image, (left, top + i * pitch), line, font, ink, boxes)
        meta = {"font": font_path.name, "font_px": px, "lines": n_lines}
        if boxes is not None:
            meta["char_boxes"] = boxes
        return Sample(
            key="", image=image, target="\n".join(lines), task="ocr", lang=self.lang, kind=self.name, meta=meta
        )

    def _paragraph(self, font_path: Path, n_sentences: int, rng: random.Random) -> str:
        """A paragraph of the corpus that the face can draw. Real prose holds characters some faces lack (a GB2312
        face has no traditional characters); the generator's text is drawn from characters all of them have."""
        for _ in range(200):
            paragraph = self.corpus.paragraph(rng, n_sentences)
            if self.text != "prose" or font_covers(font_path, paragraph):
                return paragraph
        raise ValueError(f"blocks: {font_path.name} lacks characters of 200 paragraphs in a row; choose other fonts")

    def _anywhere(self, font, lines: list[str], pitch: float, rng: random.Random) -> tuple[float, float]:
        """(left, top) drawn uniformly over the places where the block stays 2% inside every edge."""
        ascent, descent = font.getmetrics()
        block_w = max(text_width(font, line) for line in lines)
        block_h = (len(lines) - 1) * pitch + ascent + descent
        lo, hi = self.size * 0.02, self.size * 0.98
        return rng.uniform(lo, max(lo, hi - block_w)), rng.uniform(lo, max(lo, hi - block_h))

    def _fitted_words(self, font_path: Path, px: int, width: float, rng: random.Random):
        """(font, line): a run of `words` words from running text at the largest size <= px that fits `width`.

        Big type fits few letters, so runs are tried at several places in the text first (the first that fits
        wins), and the type shrinks only when none fits."""
        text, n = self._paragraph(font_path, 3, rng).split(), rng.randint(*self.words)
        font = load_font(font_path, px)
        runs = [text[s : s + n] for s in (rng.randrange(max(1, len(text) - n + 1)) for _ in range(20))]
        fitting = [run for run in runs if text_width(font, " ".join(run)) <= width]
        words = fitting[0] if fitting else min(runs, key=lambda run: text_width(font, " ".join(run)))
        smallest = max(8, round(self.size * self.font[0]))
        while text_width(font, " ".join(words)) > width and px > smallest:
            px = max(smallest, int(px * 0.95))
            font = load_font(font_path, px)
        while len(words) > 1 and text_width(font, " ".join(words)) > width:
            words = words[:-1]
        return font, wrap_words(font, " ".join(words), width)[0]  # cuts a single word wider than the line
