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
    """An input that cannot give a sample; neither stops the run. A data source's make() raises it (the engine
    lists the message among the skipped inputs), and so does reading training data (the collator counts it by
    `reason`: corrupt, no_image, too_long, image_tokens)."""

    def __init__(self, message: str, reason: str = "skipped"):
        super().__init__(message)
        self.reason = reason

    @classmethod
    def because(cls, reason: str, where: str) -> SkipSample:
        """A skip counted under `reason`; its message is "where: reason"."""
        return cls(f"{where}: {reason}", reason)
