"""The unit every data generator yields and every consumer (shards, training, evaluation) reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass
class Sample:
    key: str  # unique and deterministic, e.g. "pages-en-000123"; safe as a file name (no dots or slashes)
    image: Image.Image  # RGB
    target: str  # ground truth the model must emit
    task: str  # a key of vary.prompts.TASK_PROMPTS: ocr, markdown, chart, natural, table_latex, ...
    lang: str  # "en" or "zh"
    kind: str  # generator name: pdf, pages, tables, charts, natural, latex
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable extras (source file, page, seed...)


class SkipSample(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by a source's make() when an input cannot yield a sample; the engine counts the reason."""
