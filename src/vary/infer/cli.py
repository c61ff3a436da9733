"""`vary ocr PATH...`: images and PDF pages -> text, markdown, chart dicts or answers, on stdout or per page.

Thin over `vary.infer.batch.ocr_documents`. Imports torch only inside the command, so
registering it keeps `vary --help` and torch-free commands fast.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from vary.assets import bundled_model_dir
from vary.cli_errors import fail
from vary.infer.batch import ocr_documents
from vary.infer.tasks import Color, Quantize, Task

NO_MODEL_MESSAGE = (
    "no model folder: pass --model DIR. Any local Vary folder works: one written by `vary train`, an "
    "official checkpoint, or one converted with `vary convert SRC DST`; so does a hub id org/name[@revision] "
    "or a known name from `vary models` (this install has no bundled model in vary/assets/model)."
)
# Language models this large decode several times faster with --quantize int8 on a CPU (GOT-OCR2 2.5-6x by CPU, Vary-tiny's
# OPT-125M ~2x: docs/cpu-speed.md); below it (the bundled 10 M reader) there is nothing worth the hint.
INT8_TIP_MIN_PARAMS = 100_000_000


def int8_tip(pipeline) -> str | None:
    """One line suggesting --quantize int8 to a float32 CPU run of a large language model, else None."""
    info = pipeline.info()
    if info["device"] != "cpu" or info["quantized"] or info["dtype"] != "float32":
        return None
    if pipeline.model.language_model.num_parameters() < INT8_TIP_MIN_PARAMS:
        return None
    return "tip: --quantize int8 decodes 2-6x faster on a CPU, at a small cost in exactness (docs/cpu-speed.md)"


MODEL_HELP = "model folder (ours or official), hub id org/name[@revision], or a name from `vary models`; default: the bundled model"


def box_option(value: str | None) -> tuple[float, float, float, float] | None:
    """`--box x1,y1,x2,y2` (pixels) -> a tuple; a bad value is a usage error (exit 2)."""
    from vary.prompts import PromptError, parse_box

    try:
        return None if value is None else parse_box(value)
    except PromptError as err:
        raise typer.BadParameter(str(err), param_hint="--box") from None


def resolve_model(model: str | None) -> Path:
    """--model as a local folder (downloading a hub id or known name), else the bundled model; a one-line
    error and exit 2 when there is neither or the download fails. Call before quiet_loading(): downloads
    keep their progress bars."""
    from vary.modeling.hub import HubError
    from vary.modeling.hub import resolve_model as resolve_spec

    if model is None:
        model = bundled_model_dir()
    if model is None:
        fail(NO_MODEL_MESSAGE)
    try:
        return resolve_spec(model)
    except HubError as err:
        fail(err)


def quiet_loading() -> None:
    """No "Loading weights" bars from transformers on the command line: ours is the one that counts pages."""
    from transformers.utils import logging

    logging.disable_progress_bar()


# --- the command -----------------------------------------------------------------------------------------
def ocr_command(
    paths: list[Path] = typer.Argument(..., help="images and/or PDFs"),
    task: Task = typer.Option(Task.ocr, "--task", help="ocr: plain text, markdown, chart: python-dict -> JSON, ask: answer --question"),
    question: str | None = typer.Option(None, "--question", "-q", help="the question for --task ask"),
    model: str | None = typer.Option(None, "--model", help=MODEL_HELP),
    pages: str | None = typer.Option(None, "--pages", help="PDF pages, e.g. 1-3,7 or 5- (default: all)"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, mps"),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16, float16 or auto (bf16 on CPUs with native bf16); default: float32 on CPU, bf16/fp16 on GPU"),
    quantize: Quantize | None = typer.Option(None, "--quantize", help="int8: int8 decoder weights, faster CPU decoding; its vision branch runs in bf16 where native unless --dtype says otherwise (docs/cpu-speed.md)"),
    out: Path | None = typer.Option(None, "--out", help="write one .txt/.md/.json per page here instead of stdout"),
    max_new_tokens: int = typer.Option(2048, "--max-new-tokens", min=1, help="generation budget per page"),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="pages generated together"),
    box: str | None = typer.Option(None, "--box", help="GOT-OCR2: only the text in this box, x1,y1,x2,y2 in the page's pixels"),
    color: Color | None = typer.Option(None, "--color", help="GOT-OCR2: only the text of this colour"),
    crop: bool = typer.Option(False, "--crop", help="GOT-OCR2 multi-crop mode: page tiles + a thumbnail (large or tall pages)"),
    crop_max_tiles: int = typer.Option(6, "--crop-max-tiles", min=1, help="most tiles per page in --crop mode"),
    no_repeat_ngram_size: int | None = typer.Option(None, "--no-repeat-ngram-size", min=0, help="ban repeated n-grams of this size (0: off; default: the model's, 20 for GOT-OCR2)"),
) -> None:  # fmt: skip
    """Read text, markdown, chart data or answers from images and PDF pages."""
    from vary.infer.documents import CROP_RENDER_SIZE, RENDER_SIZE, DocumentError, open_documents
    from vary.infer.pipeline import Pipeline
    from vary.modeling.official import CheckpointError
    from vary.modeling.tokenizer import TokenizerError
    from vary.prompts import PromptError

    if task is Task.ask and not question:
        raise typer.BadParameter("--task ask needs --question", param_hint="--question")
    if task is not Task.ask and question:
        raise typer.BadParameter("--question is only used with --task ask", param_hint="--question")
    options = dict(box=box_option(box), color=color.value if color else None, crop=crop, max_tiles=crop_max_tiles)
    if no_repeat_ngram_size is not None:
        options["no_repeat_ngram_size"] = no_repeat_ngram_size
    if out is not None and out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} is a file; --out takes a folder", param_hint="--out")
    model_dir = resolve_model(model)  # may download: after the arguments are checked, so a typo wastes nothing
    quiet_loading()
    failures: list = []  # inputs that cannot be read are reported, the others still run
    render_size = CROP_RENDER_SIZE if crop else RENDER_SIZE
    documents = open_documents(paths, pages, render_size, errors=failures)  # every input checked before the model
    for _, err in failures:
        typer.secho(f"error: {err}", fg="red", err=True)
    if not documents:
        raise typer.Exit(1)
    page_failures: list = []
    try:
        pipeline = Pipeline.from_pretrained(model_dir, device=device, dtype=dtype, quantize=quantize and quantize.value)
        typer.echo(f"model: {pipeline.name} ({model_dir})", err=True)  # which model read the pages, always said
        if tip := int8_tip(pipeline):
            typer.echo(tip, err=True)
        start = time.perf_counter()
        records = ocr_documents(pipeline, documents, task.value, question, out, batch_size,
                                errors=page_failures, max_new_tokens=max_new_tokens, **options)  # fmt: skip
    except PromptError as err:  # a task or option this model has no prompt for: a usage error
        fail(err)
    except (DocumentError, CheckpointError, TokenizerError, ValueError, OSError) as err:
        fail(err, 1)
    seconds = time.perf_counter() - start
    where = f" -> {out}" if out is not None else ""
    typer.echo(f"{len(records)} page(s) in {seconds:.1f} s ({len(records) / seconds:.2f} pages/s){where}", err=True)
    if failures or page_failures:
        fail(f"{len(failures) + len(page_failures)} input(s)/page(s) failed (see above); "
             f"the other {len(records)} page(s) were written", 1)  # fmt: skip
