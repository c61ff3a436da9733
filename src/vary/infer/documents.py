"""Inputs for inference: image files and PDF pages, with page ranges and clear errors.

A `Document` is one input (a path or uploaded bytes) that is either an image or a PDF (its selected
pages, rendered on demand with PyMuPDF, the fastest renderer measured here: ~5 ms a page). An image has
one page, except multi-page TIFFs and animated GIFs/WebPs/APNGs, whose frames are its pages.
Everything that can be checked without decoding pixels is checked when the document is opened, so a bad
file fails before any model work: zero-byte files, text named .png, corrupt or password-protected PDFs,
page ranges out of bounds, images over the pixel limit (decompression bombs) and of extreme shapes.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pymupdf
from PIL import Image, UnidentifiedImageError

from vary.modeling.processor import DEFAULT_MAX_PIXELS, ImageError, load_image, size_problem

pymupdf.TOOLS.mupdf_display_errors(False)  # our DocumentError says what went wrong; no stray C-level noise

RENDER_SIZE = 1024  # longest side of a rendered PDF page, in pixels (the processor resizes it to the model's size)
# PDF pages in multi-crop mode are rendered larger than the usual 1024 px: GOT's tiles are 1024 px each, and an
# A4/Letter page gets a 2x3 grid, which this fills without upscaling.
CROP_RENDER_SIZE = 3072


class DocumentError(ValueError):
    """An input that cannot be read as an image or a PDF, or a page selection it cannot satisfy."""


@dataclass(frozen=True)
class Page:
    """One unit of work: page `number` (1-based) of a PDF, or the single page of an image (`number` None)."""

    document: Document
    number: int | None  # None: a single-page image

    @property
    def label(self) -> str:
        return self.document.name if self.number is None else f"{self.document.name} page {self.number}"

    def image(self) -> Image.Image:
        return self.document.render(self.number)


@dataclass
class Document:
    """One input. Image files stay on disk until rendered, so many inputs cost little memory up front."""

    name: str
    source: Path | bytes = field(repr=False)  # a file, or uploaded bytes
    kind: str  # "pdf", "image" or "frames" (a multi-page TIFF, an animated GIF)
    num_pages: int
    pages: list[int | None]  # the selected pages
    max_pixels: int = DEFAULT_MAX_PIXELS
    render_size: int = RENDER_SIZE
    _pdf: pymupdf.Document | None = field(default=None, repr=False)

    @classmethod
    def open(
        cls,
        source: str | Path | bytes,
        name: str | None = None,
        pages: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        render_size: int = RENDER_SIZE,
        single_images_ignore_pages: bool = False,
    ) -> Document:
        """Open a path or bytes; `pages` (e.g. "1-3,7") selects the pages of a PDF or the frames of a multi-frame
        image. A single image has one page: another range is an error, or ignored with `single_images_ignore_pages`
        (one range for a mixed batch of inputs, as `vary ocr --pages` takes)."""
        name = name or (str(source) if isinstance(source, str | Path) else "<upload>")
        source = Path(source) if isinstance(source, str | Path) else bytes(source)
        if is_pdf(read_head(source, name)):
            pdf = open_pdf(source, name)
            selected = parse_page_range(pages, pdf.page_count, name)
            return cls(name, source, "pdf", pdf.page_count, selected, max_pixels, render_size, pdf)
        frames = probe_image(source, name, max_pixels)
        if frames > 1:  # every frame is a page, as in a PDF
            selected = parse_page_range(pages, frames, name)
            return cls(name, source, "frames", frames, selected, max_pixels, render_size)
        if pages is not None and not single_images_ignore_pages and parse_page_range(pages, 1, name) != [1]:
            raise DocumentError(f"{name}: an image has one page; the page range {pages!r} selects others")
        return cls(name, source, "image", 1, [None], max_pixels, render_size)

    def __iter__(self):
        return iter([Page(self, n) for n in self.pages])

    def __len__(self) -> int:
        return len(self.pages)

    def render(self, number: int | None) -> Image.Image:
        if self.kind == "pdf":
            return render_pdf_page(self._pdf, number, self.name, self.render_size)
        try:
            if self.kind == "frames":
                return load_frame(self.source, number, self.max_pixels)
            return load_image(self.source, self.max_pixels)
        except ImageError as err:
            message = str(err)
            for placeholder in ("<bytes>", "<Image>", "<frame>"):  # load_image names what it was given
                message = message.replace(placeholder, self.name)
            raise DocumentError(message) from err


def load_frame(source: Path | bytes, number: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Frame `number` (1-based) of a multi-frame image, as load_image returns it (RGB, size-checked)."""
    with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
        try:
            image.seek(number - 1)
            if size_problem(*image.size, max_pixels) is None:  # a frame may be larger than the first one
                image.load()
            frame = image.copy()
        except (EOFError, OSError, SyntaxError, ValueError) as err:
            raise ImageError(f"<frame> frame {number}: corrupt or truncated image ({err})") from err
    return load_image(frame, max_pixels)


def read_head(source: Path | bytes, name: str, size: int = 1024) -> bytes:
    """The first bytes of a file or upload (enough to recognise a PDF); empty and missing files are errors."""
    if isinstance(source, Path):
        if not source.is_file():
            raise DocumentError(f"{name}: no such file")
        with source.open("rb") as f:
            head = f.read(size)
    else:
        head = source[:size]
    if not head:
        raise DocumentError(f"{name}: empty file (0 bytes)")
    return head


def is_pdf(data: bytes) -> bool:
    """The PDF header may sit anywhere in the first 1024 bytes (ISO 32000-1, 7.5.2); file names can lie."""
    return b"%PDF-" in data[:1024]


def open_pdf(source: Path | bytes, name: str) -> pymupdf.Document:
    try:  # PyMuPDF repairs what it can (e.g. a lost xref table)
        if isinstance(source, Path):
            pdf = pymupdf.open(source, filetype="pdf")
        else:
            pdf = pymupdf.open(stream=source, filetype="pdf")
    except Exception as err:  # pymupdf raises FileDataError, RuntimeError or mupdf errors
        raise DocumentError(f"{name}: corrupt PDF, cannot be opened ({err})") from None
    if pdf.needs_pass:
        raise DocumentError(f"{name}: the PDF is password-protected (encrypted); decrypt it first")
    if pdf.page_count == 0:
        raise DocumentError(f"{name}: the PDF has no pages")
    return pdf


def render_pdf_page(pdf: pymupdf.Document, number: int, name: str, size: int = RENDER_SIZE) -> Image.Image:
    """Rasterise a 1-based page so its longest side is `size` pixels, on white, as RGB."""
    try:
        page = pdf.load_page(number - 1)
        zoom = size / max(page.rect.width, page.rect.height, 1.0)
        pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB, alpha=False)
    except Exception as err:
        raise DocumentError(f"{name} page {number}: cannot be rendered ({err})") from None
    return Image.frombytes("RGB", (pix.width, pix.height), pix.samples)


def probe_image(source: Path | bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """Read only the image header: format known, size within the limits (decodes no pixel); the frame count."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit below
            with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
                (w, h), frames = image.size, getattr(image, "n_frames", 1)
    except Image.DecompressionBombError as err:  # Pillow's own limit (~179 MP) fires inside Image.open
        raise DocumentError(
            f"{name}: over the {max_pixels / 1e6:.0f} MP limit (decompression-bomb guard: {err}); "
            "downscale the image first"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        head = read_head(source, name, 16)
        raise DocumentError(f"{name}: neither an image nor a PDF (starts with {head!r})") from None
    problem = size_problem(w, h, max_pixels)
    if problem and "megapixels" in problem:
        problem += " (decompression-bomb guard); downscale the image first"
    if problem:
        raise DocumentError(f"{name}: {problem}")
    return frames


_RANGE_ITEM = re.compile(r"(\d+)(?:\s*-\s*(\d*))?")


def parse_page_range(spec: str | None, num_pages: int, name: str = "document") -> list[int]:
    """ "1-3,7" -> [1, 2, 3, 7] (1-based, input order, no duplicates); "5-" runs to the last page; None = all."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return list(range(1, num_pages + 1))
    pages: dict[int, None] = {}  # an ordered set
    for item in spec.split(","):
        match = _RANGE_ITEM.fullmatch(item.strip())
        if match is None:
            raise DocumentError(f"page range {spec!r}: cannot read {item.strip()!r} (use e.g. 1-3,7 or 5-)")
        first = int(match.group(1))
        last = first if match.group(2) is None else int(match.group(2) or num_pages)
        if first < 1 or last < first:
            raise DocumentError(f"page range {spec!r}: {item.strip()!r} is not a range of pages numbered from 1")
        if last > num_pages:
            raise DocumentError(f"{name}: page {last} is out of range (the document has {num_pages} page(s))")
        pages |= dict.fromkeys(range(first, last + 1))
    return list(pages)


def open_documents(
    paths: list[str | Path],
    pages: str | None = None,
    render_size: int = RENDER_SIZE,
    errors: list[tuple[str, DocumentError]] | None = None,
) -> list[Document]:
    """Open every input up front, naming the file in errors; `pages` applies to PDFs and multi-frame images.

    With `errors` (a list), an input that cannot be opened is appended as (path, DocumentError) and skipped,
    so one bad file does not stop the others; without it the first bad input raises."""
    docs = []
    for path in paths:
        try:
            docs.append(Document.open(path, str(path), pages, render_size=render_size, single_images_ignore_pages=True))
        except DocumentError as err:
            if errors is None:
                raise
            errors.append((str(path), err))
    return docs
