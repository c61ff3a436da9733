"""Fonts for the synthetic renderers (pages, tables, charts): which are installed, and loading them fast.

English uses the DejaVu and Liberation families, Chinese the Noto CJK collections; all come from Debian
packages that `scripts/setup.sh` installs (fonts-dejavu-core, fonts-liberation, fonts-noto-cjk). The list
is sorted so that a seed picks the same font on every machine with the same packages.
"""

from __future__ import annotations

import functools
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT_ROOTS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path.home() / ".fonts")

# File-name prefixes per language. Noto CJK ships .ttc collections; Latin glyphs are included, so
# Chinese pages with English words or digits render with one font.
FAMILIES = {
    "en": ("DejaVuSans", "DejaVuSerif", "LiberationSans", "LiberationSerif", "LiberationMono"),
    "zh": ("NotoSansCJK", "NotoSerifCJK"),
}
# Faces reserved for held-out sets: find_fonts(split="train") never returns them and split="heldout" returns
# only them, so a held-out score measures reading in a face the model never saw. The Chinese one is outside
# FAMILIES: AR PL SungtiL GB, a Song face from fonts-arphic-gbsn00lp.
HELDOUT_FONTS = {"en": ("LiberationSerif", "DejaVuSansCondensed"), "zh": ("gbsn00lp",)}
_HELDOUT_APT = {"en": "fonts-liberation fonts-dejavu-core", "zh": "fonts-arphic-gbsn00lp"}
FONT_SPLITS = ("train", "heldout")
# Faces too thin or too incomplete for body text.
_EXCLUDE = ("ExtraLight", "MathTeXGyre")

# style token -> predicate on the file stem; tokens combine with "-" (e.g. "serif-bold").
_STYLES = {
    "regular": lambda s: not any(t in s for t in ("Bold", "Italic", "Oblique")),
    "bold": lambda s: "Bold" in s,
    "italic": lambda s: "Italic" in s or "Oblique" in s,
    "serif": lambda s: "Serif" in s,
    "sans": lambda s: "Sans" in s and "Mono" not in s,
    "mono": lambda s: "Mono" in s,
}


class FontNotFoundError(RuntimeError):
    pass


@functools.cache
def _installed() -> tuple[Path, ...]:
    files: set[Path] = set()
    for root in FONT_ROOTS:
        if root.is_dir():
            files.update(p for ext in ("*.ttf", "*.otf", "*.ttc") for p in root.rglob(ext))
    return tuple(sorted(files, key=lambda p: (p.name, str(p))))


def find_fonts(lang: str, style: str | None = None, split: str | None = None) -> list[Path]:
    """Installed font files for `lang` ("en" or "zh"), sorted by file name; `style` filters them.

    style: None (all faces) or "-"-joined tokens from regular, bold, italic, serif, sans, mono.
    split: None (FAMILIES, held-out faces included), "train" (FAMILIES less HELDOUT_FONTS) or "heldout"
    (HELDOUT_FONTS only).
    """
    if lang not in FAMILIES:
        raise ValueError(f"find_fonts: lang must be one of {sorted(FAMILIES)}, got {lang!r}")
    if split not in (None, *FONT_SPLITS):
        raise ValueError(f"find_fonts: split must be one of {FONT_SPLITS} or None, got {split!r}")
    heldout = HELDOUT_FONTS[lang]
    families = heldout if split == "heldout" else FAMILIES[lang]
    tokens = [t for t in (style or "").lower().split("-") if t]
    unknown = [t for t in tokens if t not in _STYLES]
    if unknown:
        raise ValueError(f"find_fonts: unknown style token(s) {unknown}; known: {sorted(_STYLES)}")
    fonts = []
    for path in _installed():
        stem = path.stem
        if not stem.startswith(families) or any(x in stem for x in _EXCLUDE):
            continue
        if split == "train" and stem.startswith(heldout):
            continue
        if all(_STYLES[t](stem) for t in tokens):
            fonts.append(path)
    if not fonts and split == "heldout":
        raise FontNotFoundError(
            f"no held-out {lang!r} fonts{f' of style {style!r}' if style else ''} found (looked for "
            f"{', '.join(heldout)}); install them with `apt-get install --no-install-recommends {_HELDOUT_APT[lang]}`"
        )
    if not fonts:
        raise FontNotFoundError(
            f"no {lang!r} fonts{f' of style {style!r}' if style else ''} found under "
            f"{', '.join(str(r) for r in FONT_ROOTS)} (looked for {', '.join(families)}). "
            "Run `bash scripts/setup.sh` to install fonts-dejavu-core, fonts-liberation and fonts-noto-cjk."
        )
    return fonts


def missing_families(lang: str) -> list[str]:
    """The font families of `lang` with no installed file. Samples then use the other families only, so a
    seed no longer gives the data it gives on a machine with all of them."""
    installed = [path.stem for path in _installed()]
    return [family for family in FAMILIES[lang] if not any(stem.startswith(family) for stem in installed)]


@functools.cache
def _collection_index(path: Path) -> int:
    """Face to use inside a .ttc collection: Simplified Chinese (SC) when the collection has one."""
    if path.suffix.lower() != ".ttc":
        return 0
    for index in range(16):
        try:
            family = ImageFont.truetype(str(path), 12, index=index).getname()[0]
        except OSError:
            break
        if family.endswith(" SC"):
            return index
    return 0


@functools.cache
def _codepoints(path: Path) -> frozenset[int]:
    """Every code point the face used by load_font() maps to a glyph (its cmap)."""
    from fontTools.ttLib import TTFont

    with TTFont(str(path), fontNumber=_collection_index(Path(path)), lazy=True) as face:
        return frozenset(face.getBestCmap())


def font_covers(path: Path, text: str) -> bool:
    """Whether the face at `path` has a glyph for every non-space character of `text`. A GB2312 face lacks
    traditional and rare characters, which Pillow draws as nothing: a target would then name ink that is not there."""
    cmap = _codepoints(Path(path))
    return all(ord(ch) in cmap for ch in text if not ch.isspace())


@functools.lru_cache(maxsize=512)
def load_font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    """A Pillow FreeType font at `size` pixels (cached: loading a CJK collection takes ~10 ms).

    Basic layout (FreeType kerning, no complex shaping) measures text ~10x faster than raqm and is all
    Latin and Chinese need.
    """
    index = _collection_index(Path(path))
    return ImageFont.truetype(str(path), int(size), index=index, layout_engine=ImageFont.Layout.BASIC)


# ---- fast text drawing ------------------------------------------------------------------------------
# Pillow rasterises every glyph on every draw.text call (~7 us per Latin glyph, ~30 us per CJK glyph),
# which dominated page rendering. We rasterise each (font, character) once and paste the cached mask,
# placing glyphs by their advance widths plus the font's pair kerning, as draw.text would.
@functools.lru_cache(maxsize=512)
def _font_cache(font: ImageFont.FreeTypeFont) -> tuple[dict, dict, dict]:
    return {}, {}, {}  # widths, kerning pairs, glyphs


def text_width(font: ImageFont.FreeTypeFont, text: str) -> float:
    """font.getlength(text), memoised (callers measure the same words and characters again and again)."""
    widths = _font_cache(font)[0]
    w = widths.get(text)
    if w is None:
        w = widths[text] = font.getlength(text)
    return w


def _kern(font: ImageFont.FreeTypeFont, a: str, b: str) -> float:
    pairs = _font_cache(font)[1]
    k = pairs.get(a + b)
    if k is None:
        k = pairs[a + b] = text_width(font, a + b) - text_width(font, a) - text_width(font, b)
    return k


def _glyph(font: ImageFont.FreeTypeFont, ch: str) -> tuple[Image.Image, int, int] | None:
    glyphs = _font_cache(font)[2]
    if ch not in glyphs:
        x0, y0, x1, y1 = font.getbbox(ch)
        if x1 <= x0 or y1 <= y0:
            glyphs[ch] = None  # whitespace
        else:
            mask = Image.new("L", (x1 - x0, y1 - y0), 0)
            ImageDraw.Draw(mask).text((-x0, -y0), ch, font=font, fill=255)
            mask.load()
            glyphs[ch] = (mask, x0, y0)
    return glyphs[ch]


def draw_text(
    image: Image.Image,
    xy: tuple[float, float],
    text: str,
    font: ImageFont.FreeTypeFont,
    fill,
    boxes: list[list[int]] | None = None,
) -> float:
    """Draw one line like ImageDraw.text (anchor: left, ascender) from cached glyphs; returns its width.

    `boxes`, when given, receives one [left, top, right, bottom] per character of `text`, in order: the
    glyph's ink, or for whitespace its advance by the font size.
    Kerning is looked up only between Latin/Greek characters: basic layout reads the legacy 'kern'
    table, which CJK fonts do not have, and CJK pairs are too many to memoise.
    """
    x, y = xy
    x0, prev = x, ""
    image.load()
    core = image.im  # Image.paste's checks cost more than the paste of a small glyph
    for ch in text:
        if prev and ch < "\u0370" and prev < "\u0370":
            x += _kern(font, prev, ch)
        g = _glyph(font, ch)
        advance = text_width(font, ch)
        if g is not None:
            mask, dx, dy = g
            left, top = round(x) + dx, round(y) + dy
            core.paste(fill, (left, top, left + mask.width, top + mask.height), mask.im)
            if boxes is not None:
                boxes.append([left, top, left + mask.width, top + mask.height])
        elif boxes is not None:
            boxes.append([round(x), round(y), round(x + advance), round(y) + font.size])
        x += advance
        prev = ch
    return x - x0
