"""`vary` command line. Thin: every command is a few lines over a library function.

Sub-command groups live beside the stage they drive (vary/data/cli.py, vary/train/cli.py, ...)
and are registered here.
"""

from __future__ import annotations

from pathlib import Path

import typer

from vary.cli_errors import fail

app = typer.Typer(
    help="Vary: document OCR, chart parsing and document VQA with a scaled-up vision vocabulary.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _main() -> None:
    """Vary command line."""


@app.command("convert")
def convert_command(
    src: str = typer.Argument(
        ...,
        help="official Vary / GOT-OCR2 checkpoint, transformers' GotOcr2 folder, or one of ours: a folder, a hub id "
        "org/name[@revision] or a name from `vary models`",
    ),
    dst: Path = typer.Argument(..., help="output folder (config.json + model.safetensors + tokenizer)"),
    dtype: str = typer.Option("float32", help="float32, float16 or bfloat16 (float16 halves a model for shipping)"),
    format: str = typer.Option(
        "vary", "--format", help="'vary' (our format) or 'hf' (transformers' GotOcr2ForConditionalGeneration)"
    ),
    image_norm: str | None = typer.Option(
        None,
        help="official checkpoints' high-res preprocessing: 'imagenet' (Vary's default; Vary-base demo) or 'clip' "
        "(Vary-tiny-opt125M, Vary-toy, GOT-OCR2; known names set it); ours carry their own",
    ),
) -> None:
    """Convert an official Vary / GOT-OCR2 checkpoint to our format (or GOT-shaped ones to transformers' GotOcr2),
    or re-save one of ours at another dtype."""
    import torch

    from vary.infer.cli import resolve_model
    from vary.modeling.hub import image_norm_overrides
    from vary.modeling.loading import convert
    from vary.modeling.official import CheckpointError
    from vary.modeling.tokenizer import TokenizerError

    if image_norm not in (None, "imagenet", "clip") or dtype not in ("float32", "float16", "bfloat16"):
        raise typer.BadParameter("--image-norm must be one of ['clip', 'imagenet']; --dtype float32/float16/bfloat16")
    src_dir = resolve_model(src)  # a hub snapshot keeps its registry defaults (loading.locate), under --image-norm
    try:
        norm = image_norm_overrides(image_norm) if image_norm else {}
        out = convert(src_dir, dst, dtype=getattr(torch, dtype), format=format, **norm)
    except (CheckpointError, TokenizerError) as err:
        fail(err)
    typer.echo(f"wrote {out}")


@app.command("models")
def models_command(
    as_json: bool = typer.Option(False, "--json", help="print the registry as JSON instead of a table"),
) -> None:
    """List the known models: short names usable as --model, with their hub id, size, languages and license."""
    import json

    from vary.modeling.hub import REVISION_NOTE, registry_rows

    rows = registry_rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    title = "Known models (--model NAME or NAME@REVISION); any hub id org/name@revision works too"
    caption = None if all(row["pinned"] for row in rows) else REVISION_NOTE
    table = Table(title=title, caption=caption)
    for column in ("name", "hub id @ revision", "architecture", "params", "languages", "license", "good at"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["name"], f"{row['repo_id']}@{row['revision']}", row["architecture"], row["parameters"],
                      row["languages"], row["license"], row["good_at"])  # fmt: skip
    Console().print(table)


# --- sub-command registrations (one line per stage; each module keeps torch imports inside its commands) ---
from vary.data.cli import app as data_app  # noqa: E402
from vary.eval.cli import eval_app  # noqa: E402
from vary.infer.cli import ocr_command  # noqa: E402
from vary.serve.cli import serve_command  # noqa: E402
from vary.train.cli import train_app  # noqa: E402

app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.command("ocr")(ocr_command)
app.command("serve")(serve_command)
