"""Hostile and awkward inputs for `vary ocr` and Document: extreme shapes, huge bombs, multi-frame images,
one bad file among good ones, an --out that is a file, a device this machine lacks."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image
from typer.testing import CliRunner

from test_infer_documents import TEXT_AS_PNG, make_png, make_png_bomb
from vary.cli import app
from vary.infer.documents import Document, DocumentError, open_documents
from vary.modeling.processor import ImageError, load_image

FAST = ["--max-new-tokens", "8"]


def make_tall_png(width: int = 1, height: int = 60_000_000) -> bytes:
    """The 69-byte PNG of issue 35: 1 x 60,000,000 grey pixels (under 64 MP), with a truncated IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b"")
    )


def frames_file(fmt: str, colors: list[str]) -> bytes:
    frames = [Image.new("RGB", (64, 48), c) for c in colors]
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def invoke(*args):
    return CliRunner().invoke(app, ["ocr", *map(str, args)])


# --- shapes and bombs -----------------------------------------------------------------------------------------
def test_extreme_aspect_ratio_is_refused_from_the_header():
    tall = make_tall_png()
    assert len(tall) < 100
    with pytest.raises(DocumentError, match=r"tall\.png: 1x60000000: a side over 32768 pixels is refused"):
        Document.open(tall, "tall.png")
    with pytest.raises(ImageError, match="a side over"):  # the processor's own guard (chat, library callers)
        load_image(tall)
    with pytest.raises(ImageError, match=r"aspect ratio over 50:1"):
        load_image(make_png(6000, 100))


def test_image_over_pillows_bomb_threshold_says_so():
    bomb = make_png_bomb(14_000, 14_000)  # 196 MP: Pillow itself refuses it inside Image.open
    with pytest.raises(DocumentError, match=r"huge\.png: over the 64 MP limit"):
        Document.open(bomb, "huge.png")
    with pytest.raises(ImageError, match="over the 64 MP limit"):
        load_image(bomb)


# --- multi-frame images ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["TIFF", "GIF"])
def test_every_frame_is_a_page(fmt):
    doc = Document.open(frames_file(fmt, ["red", "lime", "blue"]), f"scan.{fmt.lower()}")
    assert (doc.kind, doc.num_pages, len(doc)) == ("frames", 3, 3)
    colours = [page.image().getpixel((10, 10)) for page in doc]
    assert [max(range(3), key=c.__getitem__) for c in colours] == [0, 1, 2]  # red, green, blue in order
    picked = Document.open(frames_file(fmt, ["red", "lime", "blue"]), "x", pages="3")
    assert [p.number for p in picked] == [3]
    with pytest.raises(DocumentError, match="page 5 is out of range"):
        Document.open(frames_file(fmt, ["red", "lime"]), "x", pages="5")


def test_ocr_reads_every_tiff_page(tmp_path, tiny_model_dir):
    (tmp_path / "scan.tiff").write_bytes(frames_file("TIFF", ["white", "black", "white"]))
    result = invoke(tmp_path / "scan.tiff", "--model", tiny_model_dir, "--out", tmp_path / "out", *FAST)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"scan-p000{i}.txt" for i in (1, 2, 3)]


# --- one bad input among good ones ------------------------------------------------------------------------------
def test_a_bad_file_is_reported_and_the_others_are_kept(tmp_path, tiny_model_dir):
    png = make_png(800, 600)
    (tmp_path / "a.png").write_bytes(make_png())
    (tmp_path / "half.png").write_bytes(png[: len(png) // 2])  # header fine, pixels cut: fails at decode
    (tmp_path / "notes.png").write_bytes(TEXT_AS_PNG)  # fails at open
    (tmp_path / "z.png").write_bytes(make_png())
    files = [tmp_path / n for n in ("a.png", "half.png", "notes.png", "z.png")]
    result = invoke(*files, "--model", tiny_model_dir, "--out", tmp_path / "out", "--batch-size", "4", *FAST)
    assert result.exit_code == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt", "z.txt"]
    stderr = " ".join(result.stderr.split())
    assert "half.png" in stderr and "notes.png: neither an image nor a PDF" in stderr
    assert "2 input(s)/page(s) failed" in stderr


def test_open_documents_collects_errors_when_asked(tmp_path):
    (tmp_path / "a.png").write_bytes(make_png())
    (tmp_path / "b.png").write_bytes(TEXT_AS_PNG)
    errors: list = []
    docs = open_documents([tmp_path / "a.png", tmp_path / "b.png"], errors=errors)
    assert [d.name for d in docs] == [str(tmp_path / "a.png")] and errors[0][0] == str(tmp_path / "b.png")
    with pytest.raises(DocumentError):
        open_documents([tmp_path / "b.png"])


# --- command-line mistakes --------------------------------------------------------------------------------------
def test_out_pointing_at_a_file_is_a_clear_error(tmp_path, tiny_model_dir):
    (tmp_path / "a.png").write_bytes(make_png())
    (tmp_path / "taken").write_text("x")
    result = invoke(tmp_path / "a.png", "--model", tiny_model_dir, "--out", tmp_path / "taken")
    assert result.exit_code == 2 and "--out takes a folder" in " ".join(result.output.split())
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_missing_device_is_a_clear_error(tmp_path, tiny_model_dir, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "a.png").write_bytes(make_png())
    result = invoke(tmp_path / "a.png", "--model", tiny_model_dir, "--device", "cuda")
    assert result.exit_code == 1 and "CUDA is not available" in result.stderr
    assert isinstance(result.exception, SystemExit)
