"""`vary` command line. Thin: every command is a few lines over a library function.

Sub-command groups live beside the stage they drive (vary/data/cli.py, vary/train/cli.py, ...)
and are registered here.
"""

from __future__ import annotations

from pathlib import Path

import typer

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
    src: Path = typer.Argument(
        ..., help="official Vary / GOT-OCR2 checkpoint folder, transformers' GotOcr2 folder, or one of ours"
    ),
    dst: Path = typer.Argument(..., help="output folder (config.json + model.safetensors + tokenizer)"),
    dtype: str = typer.Option("float32", help="float32, float16 or bfloat16 (float16 halves a model for shipping)"),
    format: str = typer.Option(
        "vary", "--format", help="'vary' (our format) or 'hf' (transformers' GotOcr2ForConditionalGeneration)"
    ),
    image_norm: str | None = typer.Option(
        None,
        help="official checkpoints' high-res preprocessing: 'imagenet' (Vary's default; Vary-base demo) or 'clip' "
        "(Vary-tiny-opt125M, Vary-toy; GOT-OCR2's default); ours carry their own",
    ),
) -> None:
    """Convert an official Vary / GOT-OCR2 checkpoint to our format (or GOT-shaped ones to transformers' GotOcr2),
    or re-save one of ours at another dtype."""
    import torch

    from vary.config import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
    from vary.modeling.loading import convert
    from vary.modeling.official import CheckpointError
    from vary.modeling.tokenizer import TokenizerError

    norms = {"imagenet": dict(image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, image_resample="bilinear"),
             "clip": dict(image_mean=CLIP_MEAN, image_std=CLIP_STD, image_resample="bicubic")}  # fmt: skip
    if image_norm not in (None, *norms) or dtype not in ("float32", "float16", "bfloat16"):
        raise typer.BadParameter(f"--image-norm must be one of {sorted(norms)}; --dtype float32/float16/bfloat16")
    try:
        out = convert(src, dst, dtype=getattr(torch, dtype), format=format, **(norms[image_norm] if image_norm else {}))
    except (CheckpointError, TokenizerError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    typer.echo(f"wrote {out}")


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
