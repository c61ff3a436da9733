"""The task and option names of inference, defined once (torch-free: the CLI and server import them early).

pipeline.TASKS, `vary ocr --task`, the server's form fields and the per-page file extensions all come from here.
"""

from __future__ import annotations

from enum import StrEnum

from vary.prompts import GOT_COLORS


class Task(StrEnum):
    ocr = "ocr"  # plain text
    markdown = "markdown"  # markdown (tables, formulas)
    chart = "chart"  # a python-dict literal -> dict
    ask = "ask"  # a short answer to a question


# GOT-OCR2's fine-grained colour prompts, as a CLI/API choice.
Color = StrEnum("Color", {name: name for name in GOT_COLORS})


class Quantize(StrEnum):
    """--quantize choices (vary.modeling.quantize.QUANTIZE_CHOICES)."""

    int8 = "int8"  # int8 decoder weights: fewer bytes per token on a memory-bound CPU decode


EXTENSIONS = {Task.ocr: ".txt", Task.markdown: ".md", Task.chart: ".json", Task.ask: ".txt"}  # one file per page
