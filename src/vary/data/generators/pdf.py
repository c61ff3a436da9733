"""pdf: a folder of real PDFs -> one sample per page: the rendered page and its text in reading order.

Like the paper's document data (page text via PyMuPDF). Rendering uses PyMuPDF too (~5 ms a page at
1024 px, 4x faster than pypdfium2 and 10x faster than pdf2image); the longest side becomes `size`.

Target: the page's text layer in PyMuPDF's block order (the content-stream order, which is reading
order for well-made PDFs, including two-column papers); lines end with "\n" and blocks are separated
by a blank line, the policy of the pages generator. Leading/trailing spaces of lines are stripped.
The sample's `lang` is detected from the text (>= 20% CJK characters -> zh), so a mixed folder works;
the shards are named after `--lang` (en, zh or mix).

Bad inputs never stop a run. Rejected while indexing the folder (listed in the manifest): empty files,
files that are not PDFs, corrupt PDFs MuPDF cannot open, encrypted PDFs and PDFs with no pages.
Skipped per page (counted in the manifest): pages without a text layer (scans, blank pages), pages
whose text is mostly unmapped glyphs, and pages that fail to render.
"""

from __future__ import annotations

import functools
import random
import re
from pathlib import Path

import pymupdf
from PIL import Image
from tqdm import tqdm

from vary.data.sample import Sample, SkipSample

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def detect_lang(text: str) -> str:
    chars = [c for c in text if not c.isspace()]
    return "zh" if chars and len(_CJK.findall(text)) >= 0.2 * len(chars) else "en"


def page_text(page: pymupdf.Page) -> str:
    """Text of a page: blocks in PyMuPDF order, lines joined by "\n", blocks by a blank line."""
    blocks = []
    for block in page.get_text("blocks"):
        if block[6] != 0:  # image block
            continue
        lines = [line.strip() for line in block[4].split("\n")]
        lines = [line for line in lines if line]
        if lines:
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


@functools.lru_cache(maxsize=2)
def _open(path: str) -> pymupdf.Document:
    """Documents stay open while their pages are made (indices are consecutive within a worker)."""
    return pymupdf.open(path)


def check_pdf(path: Path) -> tuple[int, str | None]:
    """(page count, None) for a usable PDF, else (0, reason it is rejected)."""
    if path.stat().st_size == 0:
        return 0, "empty file"
    try:
        doc = pymupdf.open(path)
    except Exception as e:  # MuPDF raises several types for damaged files
        return 0, f"not a PDF or corrupt ({type(e).__name__}: {e})"
    with doc:
        if not doc.is_pdf:
            return 0, f"not a PDF (MuPDF reads it as {doc.metadata.get('format') or 'another format'})"
        if doc.needs_pass:  # owner-password-only files open and read fine
            return 0, "encrypted (needs a password)"
        if doc.page_count == 0:
            return 0, "PDF has no pages"
        return doc.page_count, None


class PdfGenerator:
    name = "pdf"
    langs = ("en", "zh", "mix")  # "mix": one series, each page's language detected

    def __init__(
        self, count: int | None = None, lang: str = "en", size: int = 1024, input_dir: str | Path | None = None
    ):
        if input_dir is None:
            raise ValueError("pdf needs --input-dir, a folder of PDF files")
        self.root = Path(input_dir)
        if not self.root.is_dir():
            raise FileNotFoundError(f"input folder {self.root} does not exist")
        self.lang, self.size = lang, int(size)
        pymupdf.TOOLS.mupdf_display_errors(False)  # damaged files are reported by us, not on stderr
        pymupdf.TOOLS.mupdf_display_warnings(False)

        files = sorted(p for p in self.root.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise FileNotFoundError(f"input folder {self.root} holds no files")
        self.files: list[str] = []  # relative paths of usable PDFs
        self.pages: list[tuple[int, int]] = []  # (file number, page number) per index
        self.skipped: list[dict] = []
        for path in tqdm(files, desc="indexing PDFs", unit="file", disable=len(files) < 500, leave=False):
            rel = str(path.relative_to(self.root))
            n_pages, reason = check_pdf(path)
            if reason:
                self.skipped.append({"input": rel, "reason": reason})
                continue
            self.pages.extend((len(self.files), p) for p in range(n_pages))
            self.files.append(rel)
            if count is not None and len(self.pages) >= count:
                break
        if count is not None:
            self.pages = self.pages[:count]

    def __len__(self) -> int:
        return len(self.pages)

    def describe(self) -> dict:
        return {"files": len(self.files), "pages": len(self.pages), "rejected_files": len(self.skipped)}

    def make(self, index: int, rng: random.Random) -> Sample:
        file_no, page_no = self.pages[index]
        rel = self.files[file_no]
        where = f"{rel}: page {page_no + 1}"
        try:
            page = _open(str(self.root / rel))[page_no]
            text = page_text(page)
            if not text.strip():
                raise SkipSample(f"{where}: no text layer (scanned or blank page)")
            if text.count("\ufffd") > 0.1 * len(text):
                raise SkipSample(f"{where}: text layer is mostly unmapped glyphs")
            zoom = self.size / max(page.rect.width, page.rect.height)
            pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False, colorspace=pymupdf.csRGB)
            image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
        except SkipSample:
            raise
        except Exception as e:  # a damaged page, or the file changed since indexing
            raise SkipSample(f"{where}: cannot be read ({type(e).__name__}: {e})") from e
        lang = detect_lang(text)
        meta = {"file": rel, "page": page_no + 1}
        return Sample(key="", image=image, target=text, task="ocr", lang=lang, kind=self.name, meta=meta)
