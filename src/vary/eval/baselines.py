"""Predictors: the small protocol the runner scores, the OCR baselines, and the adapter for our pipeline.

Anything with a `name` and `predict(image, task, question=None) -> str` can be evaluated; a predictor whose
`predict` also takes `lang` is given the data set's declared language (e.g. our shards' "en"/"zh") and may
return a `Prediction` saying which language it ran. `get_predictor` builds one from a command-line spec:
  "tesseract"            Tesseract (Debian tesseract-ocr); the declared language, else the better of eng
                         and chi_sim by Tesseract's own confidence
  "tesseract:LANG"       Tesseract with a fixed language, e.g. "tesseract:eng", "tesseract:chi_sim+eng"
  "rapidocr"             RapidOCR (PP-OCRv4 ONNX models shipped in the rapidocr-onnxruntime wheel)
  a model directory      vary.infer.pipeline.Pipeline.from_pretrained(directory)
  org/name[@rev], a name the same, from the hub's cache or downloaded (vary.modeling.hub, `vary models`)
OCR engines cannot answer questions or turn a chart into a python dict: for tasks "ask" and "chart" they
raise `UnsupportedTask`, which the runner reports as "n/a" instead of a zero score. For every other task
they return their plain OCR text (on "natural" photos too, scored against the nature sentences).
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

# Any CJK ideograph or CJK/full-width punctuation: no space belongs between two of these.
_CJK = r"\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef"
_SPACE_BETWEEN_CJK_RE = re.compile(rf"(?<=[{_CJK}]) +(?=[{_CJK}])")


@runtime_checkable
class Predictor(Protocol):
    name: str

    def predict(self, image: Image.Image, task: str, question: str | None = None) -> str: ...


class Prediction(str):
    """A predicted text (a str) that also says which language the engine ran (`lang`)."""

    lang: str | None

    def __new__(cls, text: str, lang: str | None = None):
        prediction = super().__new__(cls, text)
        prediction.lang = lang
        return prediction


class UnsupportedTask(Exception):  # noqa: N818 - reads better at the raise site than UnsupportedTaskError
    """The predictor cannot do this task at all (e.g. an OCR engine asked a question)."""


def _ocr_only(name: str, task: str) -> None:
    if task == "ask":
        raise UnsupportedTask(f"{name} is an OCR engine: it cannot answer questions")
    if task == "chart":
        raise UnsupportedTask(f"{name} is an OCR engine: it cannot convert a chart to a python dict")


class TesseractPredictor:
    """The `tesseract` CLI (page segmentation mode 3, automatic).

    A baseline gets its best honest setting without peeking at the answer. lang="auto" reads a page in the
    language its data set declares (DATASET_LANGS maps "en"/"zh" to eng/chi_sim); without one it reads the
    page with eng and with chi_sim and keeps the reading Tesseract is more confident of (mean word
    confidence). Tesseract's own script detector is not used: on Chinese text blocks it often says Latin, and
    reading Chinese as English scored ED 0.31 against 0.06 with chi_sim. "chi_sim+eng" on English pages is
    ~4x slower and no better. `preserve_interword_spaces=1` keeps Tesseract from putting a space between
    Chinese characters.
    """

    DATASET_LANGS = {"en": "eng", "zh": "chi_sim"}
    CANDIDATES = ("eng", "chi_sim")

    def __init__(self, lang: str = "auto", timeout_s: float = 300.0):
        self.binary = shutil.which("tesseract")
        if self.binary is None:
            raise RuntimeError("tesseract not found on PATH (Debian: apt-get install tesseract-ocr)")
        self.lang = lang
        self.timeout_s = timeout_s
        self.name = "tesseract" if lang == "auto" else f"tesseract:{lang}"

    def read(self, png: bytes, lang: str) -> tuple[str, float]:
        """(text, mean word confidence 0-100) of one Tesseract run: text and TSV come from the same run."""
        with tempfile.TemporaryDirectory(prefix="vary-tesseract-") as tmp:
            base = f"{tmp}/out"
            cmd = [self.binary, "stdin", base, "-l", lang, "--psm", "3", "-c", "preserve_interword_spaces=1",
                   "txt", "tsv"]  # fmt: skip
            done = subprocess.run(cmd, input=png, capture_output=True, timeout=self.timeout_s, check=False)
            if done.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.decode(errors='replace')}"
                )
            text = Path(f"{base}.txt").read_text(encoding="utf-8", errors="replace")
            with open(f"{base}.tsv", encoding="utf-8", errors="replace", newline="") as f:
                rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                confs = [float(r["conf"]) for r in rows if r.get("text", "").strip() and float(r["conf"]) >= 0]
        text = _SPACE_BETWEEN_CJK_RE.sub("", text.replace("\f", ""))
        return re.sub(r"\n{3,}", "\n\n", text).strip(), (sum(confs) / len(confs) if confs else 0.0)

    def predict(self, image: Image.Image, task: str, question: str | None = None, lang: str | None = None) -> str:
        """`lang`: the data set's declared language ("en", "zh" or a Tesseract code), used when auto."""
        _ocr_only(self.name, task)
        buf = io.BytesIO()
        image.convert("RGB").save(buf, "PNG")
        png = buf.getvalue()
        if self.lang != "auto":
            chosen = self.lang
        elif lang:
            chosen = self.DATASET_LANGS.get(lang, lang)
        else:  # no declared language: the reading Tesseract trusts more
            readings = {code: self.read(png, code) for code in self.CANDIDATES}
            chosen = max(readings, key=lambda code: readings[code][1])
            return Prediction(readings[chosen][0], chosen)
        return Prediction(self.read(png, chosen)[0], chosen)


class RapidOCRPredictor:
    """RapidOCR (PP-OCRv4 detection + Chinese/English recognition, ONNX on CPU); boxes joined in reading order.

    Two settings, both measured on held-out 1024 px pages (benchmarks/bench_eval.py):
    * the 180-degree line classifier is off: pages are upright, and it flipped a few lines per page, whose
      garbled text then fell under the score threshold and vanished (English F1 0.87-0.92 -> 0.96-0.99);
    * pages are upscaled (bicubic) until the long side is `min_long_side`, because the recogniser drops the
      spaces between small English words (English F1 0.91-0.96 -> 0.99-1.0, for ~1.3x the CPU time).
    """

    def __init__(self, min_long_side: int = 2048):
        from rapidocr_onnxruntime import RapidOCR  # imported here: onnxruntime start-up is not free

        self.engine = RapidOCR()
        self.min_long_side = min_long_side
        self.name = "rapidocr"

    def predict(self, image: Image.Image, task: str, question: str | None = None) -> str:
        _ocr_only(self.name, task)
        image = image.convert("RGB")
        scale = self.min_long_side / max(image.size)
        if scale > 1.0:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        result, _ = self.engine(np.asarray(image), use_cls=False)
        if not result:
            return ""
        boxes = np.array([r[0] for r in result], dtype=np.float32)  # (N, 4 corners, xy)
        return join_reading_order(boxes, [r[1] for r in result])


def join_reading_order(boxes: np.ndarray, texts: list[str]) -> str:
    """Text boxes (N, 4 corners, xy) -> text in reading order, columns first.

    Hand-written because RapidOCR only sorts boxes top-to-bottom, which interleaves the lines of a
    two-column page. Boxes whose vertical centres lie within half a median box height form a row; runs of
    rows that leave a common vertical strip free (a gutter at least 0.8 box heights wide) form a block; a
    block with text on both sides of a gutter is split into columns, each read the same way recursively.
    Boxes in a row join with a space unless both neighbouring characters are CJK.
    """
    top, bottom = boxes[:, :, 1].min(1), boxes[:, :, 1].max(1)
    geom = _Geometry(left=boxes[:, :, 0].min(1), right=boxes[:, :, 0].max(1), centre=(top + bottom) / 2,
                     height=float(np.median(bottom - top)))  # fmt: skip
    lines = []
    for row in _read(np.arange(len(texts)), geom):
        parts = [texts[i].strip() for i in row if texts[i].strip()]
        lines.append(_SPACE_BETWEEN_CJK_RE.sub("", " ".join(parts)))
    return "\n".join(lines)


@dataclass
class _Geometry:
    left: np.ndarray
    right: np.ndarray
    centre: np.ndarray
    height: float


def _rows(idx: np.ndarray, g: _Geometry) -> list[list[int]]:
    """Cluster boxes by vertical centre; each row sorted left to right."""
    rows: list[list[int]] = []
    row_centre = 0.0
    for i in idx[np.argsort(g.centre[idx], kind="stable")]:
        if rows and abs(g.centre[i] - row_centre) <= 0.5 * g.height:
            rows[-1].append(int(i))
            row_centre = float(np.mean(g.centre[rows[-1]]))
        else:
            rows.append([int(i)])
            row_centre = float(g.centre[i])
    return [sorted(r, key=lambda i: g.left[i]) for r in rows]


def _free(row: list[int], lo: float, hi: float, g: _Geometry) -> list[tuple[float, float]]:
    """Horizontal intervals of [lo, hi] no box of the row covers, at least a gutter wide."""
    free, x = [], lo
    for i in row:  # sorted by left edge
        if g.left[i] - x >= 0.8 * g.height:
            free.append((x, float(g.left[i])))
        x = max(x, float(g.right[i]))
    if hi - x >= 0.8 * g.height:
        free.append((x, hi))
    return free


def _intersect(
    a: list[tuple[float, float]], b: list[tuple[float, float]], min_width: float
) -> list[tuple[float, float]]:
    out = [(max(a0, b0), min(a1, b1)) for a0, a1 in a for b0, b1 in b]
    return [(x0, x1) for x0, x1 in out if x1 - x0 >= min_width]


def _read(idx: np.ndarray, g: _Geometry) -> list[list[int]]:
    """Rows of box indices in reading order (see join_reading_order)."""
    lo, hi = float(g.left[idx].min()), float(g.right[idx].max())
    blocks: list[tuple[list[list[int]], list[tuple[float, float]]]] = []  # (rows, common free strips)
    for row in _rows(idx, g):
        free = _free(row, lo, hi, g)
        common = _intersect(blocks[-1][1], free, 0.8 * g.height) if blocks else []
        if common:
            blocks[-1][0].append(row)
            blocks[-1] = (blocks[-1][0], common)
        else:
            blocks.append(([row], free))
    out: list[list[int]] = []
    for rows, strips in blocks:
        members = np.array([i for r in rows for i in r])
        cuts = [(x0 + x1) / 2 for x0, x1 in strips
                if (g.right[members] <= x0).any() and (g.left[members] >= x1).any()]  # fmt: skip
        if not cuts:
            out.extend(rows)
            continue
        column_of = np.searchsorted(np.array(cuts), (g.left[members] + g.right[members]) / 2)
        for c in range(len(cuts) + 1):
            if (column_of == c).any():
                out.extend(_read(members[column_of == c], g))
    return out


class PipelinePredictor:
    """Adapter from our inference pipeline (or any object with `run(image, task, question)`) to Predictor.

    Dataset tasks the pipeline knows under another name are mapped (TASK_ALIASES); others pass through.
    """

    TASK_ALIASES = {"natural": "ocr", "ocr_zh": "ocr", "table_markdown": "markdown"}

    def __init__(self, pipeline, name: str):
        self.pipeline = pipeline
        self.name = name

    def predict(self, image: Image.Image, task: str, question: str | None = None) -> str:
        out = self.pipeline.run(image, self.TASK_ALIASES.get(task, task), question=question)
        return str(out)  # a plain str: the pipeline returns a str subclass carrying generation details


def get_predictor(spec: str) -> Predictor:
    """A predictor from a spec: "tesseract", "tesseract:LANG", "rapidocr", or a model directory."""
    if spec == "tesseract" or spec.startswith("tesseract:"):
        return TesseractPredictor(lang=spec.partition(":")[2] or "auto")
    if spec == "rapidocr":
        return RapidOCRPredictor()
    from vary.modeling.hub import UnknownModelError, resolve_model

    unknown = (f"unknown model spec {spec!r}: use 'tesseract', 'tesseract:LANG', 'rapidocr', an existing model "
               "directory, a hub id org/name[@revision] or a name from `vary models`")  # fmt: skip
    try:
        path = resolve_model(spec)  # downloads a hub id; other HubErrors (no connection, ...) are ValueErrors
    except UnknownModelError:
        raise ValueError(unknown) from None
    if not path.is_dir():
        raise ValueError(unknown)
    from vary.infer.pipeline import Pipeline  # the model stack loads only when a model is evaluated

    name = path.name if Path(spec).expanduser().is_dir() else spec  # hub models keep the name they were given as
    return PipelinePredictor(Pipeline.from_pretrained(path), name=name)
