"""The xelatex compiler, page markers, first-page rendering and glyph coverage checks."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pymupdf
from fontTools.ttLib import TTFont
from PIL import Image

from vary.data.generators.latex.templates import (
    CJK_FONTS,
)
from vary.data.sample import SkipSample


class XelatexNotFoundError(RuntimeError):
    pass


def _tex_env() -> dict[str, str]:
    # fixed dates: the PDF (and anything TeX prints from \today) does not depend on the clock
    return {**os.environ, "SOURCE_DATE_EPOCH": "0", "FORCE_SOURCE_DATE": "1"}


def first_error(log: str) -> str:
    """The first TeX error of a log (with its line), or its last line when there is none."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("!"):
            where = next((x.strip() for x in lines[i + 1 : i + 8] if x.startswith("l.")), "")
            return f"{line[1:].strip()} {where}".strip()
    tail = [x for x in lines if x.strip()]
    return tail[-1].strip() if tail else "no log written"


class Xelatex:
    """Runs xelatex in a scratch folder with a timeout, no shell escape and fixed dates."""

    def __init__(self, executable: str = "xelatex", timeout: float = 60.0):
        found = shutil.which(executable)
        if found is None:
            raise XelatexNotFoundError(
                f"xelatex not found ({executable!r} is not on PATH). The latex generator needs TeX Live: run "
                "`bash scripts/setup.sh` (installs texlive-xetex texlive-latex-recommended texlive-lang-chinese)."
            )
        self.executable, self.timeout = found, float(timeout)

    def compile(self, document: str, workdir: Path) -> Path:
        """Compile `document` to workdir/page.pdf; a failure becomes SkipSample with TeX's first error."""
        (workdir / "page.tex").write_text(document, encoding="utf-8")
        cmd = [self.executable, "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", "page.tex"]
        try:
            proc = subprocess.run(
                cmd, cwd=workdir, capture_output=True, timeout=self.timeout, env=_tex_env(), stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            raise SkipSample(f"latex: xelatex timed out after {self.timeout:g} s") from None
        pdf = workdir / "page.pdf"
        if proc.returncode != 0 or not pdf.is_file():
            log = (workdir / "page.log").read_text(errors="replace") if (workdir / "page.log").is_file() else ""
            raise SkipSample(f"latex: xelatex failed: {first_error(log or proc.stdout.decode(errors='replace'))}")
        return pdf


def read_marks(path: Path) -> dict[int, int]:
    """block index -> page where it ended, from the \\varymark file."""
    marks = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                marks.setdefault(int(parts[0]), int(parts[1]))
    return marks


def render_first_page(pdf: Path, size: int) -> tuple[Image.Image, int]:
    """(first page as an RGB image whose longest side is `size`, page count)."""
    with pymupdf.open(pdf) as doc:
        page = doc[0]
        zoom = size / max(page.rect.width, page.rect.height)
        expected = (round(page.rect.width * zoom), round(page.rect.height * zoom))
        pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False, colorspace=pymupdf.csRGB)
        image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
        pages = doc.page_count
    if image.size != expected:  # the pixmap rounds its box outward: at most one pixel off
        image = image.resize(expected, Image.Resampling.BICUBIC)
    return image, pages


@functools.lru_cache(maxsize=16)
def _cjk_cmap(font_key: str) -> frozenset[int] | None:
    """Code points the CJK font draws (None when its file cannot be found or read: then trust it)."""
    font, _ = CJK_FONTS[font_key]
    if font.endswith((".otf", ".ttf")):
        path, index = subprocess.run(["kpsewhich", font], capture_output=True, text=True).stdout.strip(), "0"
    else:
        out = subprocess.run(["fc-match", "-f", "%{file}|%{index}", font], capture_output=True, text=True).stdout
        path, _, index = out.partition("|")
    if not path:
        return None
    try:
        with TTFont(path, fontNumber=int(index or 0), lazy=True) as ttf:
            return frozenset(ttf.getBestCmap())
    except (OSError, ValueError, KeyError):
        return None


@functools.lru_cache(maxsize=16)
def glyph_checker(font_key: str):
    """A cached `char -> bool`: can the template's CJK font draw this character?"""
    cmap = _cjk_cmap(font_key)

    def ok(char: str) -> bool:
        # below U+2E80 (Latin, punctuation) the main font draws; \tracinglostchars=3 catches the rest
        return ord(char) < 0x2E80 or cmap is None or ord(char) in cmap

    return ok
