"""`vary ocr PATH...`: images and PDF pages -> text, markdown, chart dicts or answers, on stdout or per page.

Thin over `ocr_documents`, which tests call directly. Imports torch only inside the command, so
registering it keeps `vary --help` and torch-free commands fast.
"""

from __future__ import annotations

import json
import sys
import time
from enum import StrEnum
from pathlib import Path

import typer

from vary.assets import bundled_model_dir

EXTENSIONS = {"ocr": ".txt", "markdown": ".md", "chart": ".json", "ask": ".txt"}
NO_MODEL_MESSAGE = (
    "no model folder: pass --model DIR. Any local Vary folder works: one written by `vary train`, an "
    "official checkpoint, or one converted with `vary convert SRC DST` (this install has no bundled model in "
    "vary/assets/model)."
)


class Task(StrEnum):
    """The tasks of vary.infer.pipeline.TASKS, as CLI/API choices (kept here: this module must not import torch)."""

    ocr = "ocr"  # plain text
    markdown = "markdown"  # markdown (tables, formulas)
    chart = "chart"  # a python-dict literal -> dict
    ask = "ask"  # a short answer to a question


class Quantize(StrEnum):
    """Choices of --quantize (vary.modeling.quantize.QUANTIZE_CHOICES; kept here: no torch import)."""

    int8 = "int8"


def resolve_model(model: Path | None) -> Path:
    """--model, else the bundled model; exits with a clear message when there is neither."""
    if model is None:
        model = bundled_model_dir()
    if model is None:
        typer.secho(f"error: {NO_MODEL_MESSAGE}", fg="red", err=True)
        raise typer.Exit(2)
    return model


def quiet_loading() -> None:
    """No "Loading weights" bars from transformers on the command line: ours is the one that counts pages."""
    from transformers.utils import logging

    logging.disable_progress_bar()


# --- the library function --------------------------------------------------------------------------------
def output_names(pages, ext: str) -> list[str]:
    """`stem.ext` for images, `stem-p0003.ext` for PDF pages; a numeric suffix keeps names from clashing."""
    names, seen = [], set()
    for page in pages:
        stem = Path(page.document.name).stem or "upload"
        base = stem if page.number is None else f"{stem}-p{page.number:04d}"
        name, n = base + ext, 1
        while name in seen:
            n += 1
            name = f"{base}-{n}{ext}"
        seen.add(name)
        names.append(name)
    return names


def ocr_documents(
    pipeline,
    documents: list,
    task: str = "ocr",
    question: str | None = None,
    out: Path | None = None,
    batch_size: int = 4,
    progress: bool = True,
    **overrides,
) -> list[dict]:
    """Run `task` on every page of the documents (documents.open_documents); a file per page in `out`, or stdout."""
    from tqdm import tqdm

    from vary.infer.pipeline import page_record

    all_pages = [page for doc in documents for page in doc]
    names = output_names(all_pages, EXTENSIONS[task])
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    records = []
    bar = tqdm(total=len(all_pages), unit="page", disable=not progress or len(all_pages) < 2, file=sys.stderr)
    results = pipeline.run_pages(all_pages, task, question, batch_size=batch_size, **overrides)
    for name, (page, result) in zip(names, results, strict=True):
        record = page_record(page, result, task)
        text = json.dumps(record, ensure_ascii=False, indent=2) if task == "chart" else result.text
        if out is not None:
            (out / name).write_text(text + "\n", encoding="utf-8")
        else:
            header = f"==> {page.label} <==\n" if len(all_pages) > 1 else ""
            tqdm.write(header + text, file=sys.stdout)
        if result.truncated_by_loop_guard:
            tqdm.write(f"warning: {page.label}: stopped by the repetition-loop guard", file=sys.stderr)
        records.append(record)
        bar.update(1)
    bar.close()
    return records


# --- the command -----------------------------------------------------------------------------------------
def ocr_command(
    paths: list[Path] = typer.Argument(..., help="images and/or PDFs"),
    task: Task = typer.Option(Task.ocr, "--task", help="ocr: plain text, markdown, chart: python-dict -> JSON, ask: answer --question"),
    question: str | None = typer.Option(None, "--question", "-q", help="the question for --task ask"),
    model: Path | None = typer.Option(None, "--model", help="model folder (ours or official); default: the bundled model"),
    pages: str | None = typer.Option(None, "--pages", help="PDF pages, e.g. 1-3,7 or 5- (default: all)"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, mps"),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16, float16 or auto (bf16 on CPUs with native bf16); default: float32 on CPU, bf16/fp16 on GPU"),
    quantize: Quantize | None = typer.Option(None, "--quantize", help="int8: int8 decoder weights, faster CPU decoding; with --dtype auto the vision branch runs in bf16 where native (docs/cpu-speed.md)"),
    out: Path | None = typer.Option(None, "--out", help="write one .txt/.md/.json per page here instead of stdout"),
    max_new_tokens: int = typer.Option(2048, "--max-new-tokens", min=1, help="generation budget per page"),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="pages generated together"),
) -> None:  # fmt: skip
    """Read text, markdown, chart data or answers from images and PDF pages."""
    from vary.infer.documents import DocumentError, open_documents
    from vary.infer.pipeline import Pipeline
    from vary.modeling.official import CheckpointError
    from vary.modeling.tokenizer import TokenizerError

    quiet_loading()
    model_dir = resolve_model(model)
    if task is Task.ask and not question:
        raise typer.BadParameter("--task ask needs --question", param_hint="--question")
    if task is not Task.ask and question:
        raise typer.BadParameter("--question is only used with --task ask", param_hint="--question")
    try:
        documents = open_documents(paths, pages)  # check every input before spending time on the model
        pipeline = Pipeline.from_pretrained(model_dir, device=device, dtype=dtype, quantize=quantize and quantize.value)
        start = time.perf_counter()
        records = ocr_documents(
            pipeline, documents, task.value, question, out, batch_size, max_new_tokens=max_new_tokens
        )
    except (DocumentError, CheckpointError, TokenizerError, ValueError) as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(1) from None
    seconds = time.perf_counter() - start
    where = f" -> {out}" if out is not None else ""
    typer.echo(f"{len(records)} page(s) in {seconds:.1f} s ({len(records) / seconds:.2f} pages/s){where}", err=True)
