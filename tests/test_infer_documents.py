"""Inference inputs: PDF pages, page ranges and the bad files users send (vary.infer.documents).

The make_* helpers build every input in memory; test_infer_cli / test_serve_* import them from here.
"""

from __future__ import annotations

import io
import struct
import zlib

import pymupdf
import pytest
from PIL import Image

from vary.infer.documents import Document, DocumentError, open_documents, parse_page_range
from vary.modeling.processor import ImageError, load_image


# --- input makers ------------------------------------------------------------------------------------------
def make_pdf(num_pages: int = 3, encrypt: bool = False) -> bytes:
    """A text PDF whose page i says "Page i" (PyMuPDF); optionally AES-256 encrypted."""
    doc = pymupdf.open()
    for i in range(1, num_pages + 1):
        page = doc.new_page(width=595, height=842)
        page.insert_text((72, 100), f"Page {i}", fontsize=36)
        page.insert_text((72, 160), "The quick brown fox jumps over the lazy dog.", fontsize=12)
    if encrypt:
        return doc.tobytes(encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="secret", owner_pw="owner")
    return doc.tobytes()


def make_corrupt_pdf() -> bytes:
    return b"%PDF-1.7\n" + bytes(range(256)) * 8 + b"\n%%EOF"


def make_png(width: int = 320, height: int = 240, color: str = "white") -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (width, height), color)
    image.paste((20, 20, 20), (20, 20, width // 2, 40))  # a dark "line of text"
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_png_bomb(width: int = 10_000, height: int = 10_000) -> bytes:
    """A valid ~12 KB 1-bit PNG that decodes to width x height pixels (100 megapixels by default)."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)  # filter byte + one row of zero bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


TEXT_AS_PNG = b"This is a text file that someone named page.png\n"


# --- page ranges -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, expected",
    [(None, [1, 2, 3, 4, 5, 6, 7, 8]), ("all", [1, 2, 3, 4, 5, 6, 7, 8]), ("1-3,7", [1, 2, 3, 7]),
     ("7, 2-3, 2", [7, 2, 3]), ("6-", [6, 7, 8]), ("4", [4]), ("8-8", [8])],
)  # fmt: skip
def test_parse_page_range(spec, expected):
    assert parse_page_range(spec, 8) == expected


@pytest.mark.parametrize(
    "spec, message",
    [("9", "page 9 is out of range"), ("2-12", "page 12 is out of range"), ("0", "numbered from 1"),
     ("5-2", "numbered from 1"), ("1,,2", "cannot read"), ("one", "cannot read"), ("1-3-5", "cannot read")],
)  # fmt: skip
def test_parse_page_range_errors(spec, message):
    with pytest.raises(DocumentError, match=message):
        parse_page_range(spec, 8, "doc.pdf")


# --- PDFs ---------------------------------------------------------------------------------------------------
def test_pdf_pages_are_selected_and_rendered():
    doc = Document.open(make_pdf(5), "report.pdf", pages="2-3,5", render_size=400)
    assert (doc.kind, doc.num_pages, doc.pages) == ("pdf", 5, [2, 3, 5])
    pages = list(doc)
    assert [p.label for p in pages] == ["report.pdf page 2", "report.pdf page 3", "report.pdf page 5"]
    image = pages[0].image()
    assert image.mode == "RGB" and max(image.size) == 400
    assert image.size[1] > image.size[0]  # A4 portrait kept its aspect
    assert image.getextrema()[0][0] < 100  # the text was drawn (some dark pixels)


def test_pdf_detected_by_content_not_name(tmp_path):
    path = tmp_path / "scan.png"  # a PDF with the wrong extension
    path.write_bytes(make_pdf(2))
    (doc,) = open_documents([path])
    assert doc.kind == "pdf" and len(doc) == 2


def test_corrupt_pdf_is_a_clear_error():
    with pytest.raises(DocumentError, match=r"broken\.pdf: corrupt PDF"):
        Document.open(make_corrupt_pdf(), "broken.pdf")


def test_encrypted_pdf_is_a_clear_error():
    with pytest.raises(DocumentError, match=r"locked\.pdf: the PDF is password-protected"):
        Document.open(make_pdf(2, encrypt=True), "locked.pdf")


def test_page_range_out_of_bounds_names_the_file():
    with pytest.raises(DocumentError, match=r"short\.pdf: page 4 is out of range \(the document has 3 page"):
        Document.open(make_pdf(3), "short.pdf", pages="1,4")


def test_truncated_pdf_is_repaired_or_refused():
    data = make_pdf(3)
    try:
        doc = Document.open(data[: len(data) * 3 // 5], "cut.pdf")
    except DocumentError as err:
        assert "cut.pdf" in str(err)
    else:  # PyMuPDF rebuilt the cross-reference table: every page must still render
        assert all(page.image().size[0] > 0 for page in doc)


# --- images and non-images ---------------------------------------------------------------------------------
def test_image_document_has_one_page(tmp_path):
    path = tmp_path / "page.png"
    path.write_bytes(make_png())
    (doc,) = open_documents([path], pages="1-3")  # the page range applies to PDFs only
    assert (doc.kind, doc.pages) == ("image", [None])
    assert list(doc)[0].image().size == (320, 240)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(DocumentError, match=r"empty\.png: empty file \(0 bytes\)"):
        open_documents([path])


def test_text_file_named_png(tmp_path):
    path = tmp_path / "page.png"
    path.write_bytes(TEXT_AS_PNG)
    with pytest.raises(DocumentError, match=r"page\.png: neither an image nor a PDF"):
        open_documents([path])


def test_missing_file(tmp_path):
    with pytest.raises(DocumentError, match="no such file"):
        open_documents([tmp_path / "nope.pdf"])


def test_100_megapixel_image_is_refused_before_decoding():
    bomb = make_png_bomb()
    assert len(bomb) < 100_000  # small file, huge image
    with pytest.raises(DocumentError, match=r"bomb\.png: 10000x10000 = 100 megapixels is over the 64 MP limit"):
        Document.open(bomb, "bomb.png")
    with pytest.raises(ImageError, match="100 megapixels"):  # the processor's own guard says the same
        load_image(bomb)


def test_truncated_image_fails_at_decode_with_its_name():
    data = make_png(800, 600)
    doc = Document.open(data[: len(data) // 2], "half.png")  # the header is fine ...
    with pytest.raises(DocumentError, match=r"half\.png"):  # ... the pixels are not
        list(doc)[0].image()
