"""`vary train run|show|plot|features|warmup`: thin wrappers over the vary.train modules.

vary train run nano --data data/pages train.max_steps=500 optim.lr=3e-4
torchrun --nproc_per_node 2 -m vary train run nano --data data/pages        # 2 CPU processes (gloo)
accelerate launch --config_file configs/accelerate/deepspeed-zero2.yaml -m vary train run vary-tiny --data data/tiny
"""

from __future__ import annotations

from pathlib import Path

import typer

from vary.cli_errors import fail

train_app = typer.Typer(
    help="Train Vary stages (vary-tiny, vary-base-pretrain, vary-base-sft, nano).", no_args_is_help=True
)

RECIPE_HELP = "a recipe name from configs/ (nano, vary-tiny, vary-base-pretrain, vary-base-sft) or a YAML path"
OVERRIDES_HELP = "recipe overrides, key.path=value (YAML values), e.g. optim.lr=1e-4 train.max_steps=100"


def _recipe(recipe: str, overrides: list[str] | None, data: list[str] | None, out: Path | None):
    from vary.train.recipes import load_recipe

    extra = list(overrides or [])
    if data:
        extra.append("data.sources=[" + ", ".join(f"{{path: '{d}'}}" for d in data) + "]")
    if out is not None:
        extra.append(f"train.output_dir='{out}'")
    return load_recipe(recipe, extra)


@train_app.command("run")
def run_cmd(
    recipe: str = typer.Argument(..., help=RECIPE_HELP),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    data: list[str] | None = typer.Option(None, "--data", help="shard folder or LLaVA JSON; repeatable; replaces data.sources"),
    out: Path | None = typer.Option(None, "--out", help="run folder (train.output_dir)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the latest checkpoint in the run folder"),
    resume_from: Path | None = typer.Option(None, "--resume-from", help="continue from this checkpoint folder"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar or report"),
) -> None:  # fmt: skip
    """Train a recipe; checkpoints, log.jsonl and TensorBoard go to the run folder."""
    from vary.data.dataset import DataError
    from vary.modeling.official import CheckpointError
    from vary.modeling.tokenizer import TokenizerError
    from vary.train.init import InitError
    from vary.train.recipes import RecipeError, check_resume
    from vary.train.trainer import OutOfMemory, Trainer

    try:
        r = _recipe(recipe, overrides, data, out)
        if resume_from or resume:  # the run folder's recipe.yaml must keep describing the run
            check_resume(r, resume_from.parent if resume_from else r.train.output_dir)
        trainer = Trainer(r, resume=resume_from or resume, progress=not quiet)
        state = trainer.train()
    except OutOfMemory as err:
        fail(err, 3)
    except (RecipeError, DataError, InitError, CheckpointError, TokenizerError, FileNotFoundError) as err:
        fail(err)
    if trainer.main:
        skipped = ", ".join(f"{k} {v}" for k, v in state.skipped.items()) or "none"
        typer.echo(
            f"done: {state.step} steps, {state.samples} samples, {state.tokens} answer tokens in {state.elapsed:.0f} s; "
            f"truncated {state.truncated}, skipped {skipped}\nmodel: {trainer.out / 'model'}"
        )


@train_app.command("show")
def show_cmd(
    recipe: str = typer.Argument(..., help=RECIPE_HELP),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """Print a recipe with its overrides applied (and checked)."""
    from vary.train.recipes import RecipeError

    try:
        typer.echo(_recipe(recipe, overrides, None, None).to_yaml())
    except RecipeError as err:
        fail(err)


@train_app.command("plot")
def plot_cmd(
    run_dir: Path = typer.Argument(..., help="a run folder (holds log.jsonl)"),
    out: Path | None = typer.Option(None, "--out", help="PNG path (default RUN_DIR/curves.png)"),
) -> None:
    """Loss and learning-rate curves of a run as a PNG."""
    from vary.train.plot import plot_run

    try:
        typer.echo(f"wrote {plot_run(run_dir, out)}")
    except FileNotFoundError as err:
        fail(err)


@train_app.command("features")
def features_cmd(
    model: Path = typer.Option(..., "--model", help="a model folder whose (frozen) vision vocabulary the run uses"),
    data: list[str] = typer.Option(..., "--data", help="shard folder or LLaVA JSON; repeatable"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    dtype: str = typer.Option("float16", "--dtype", help="storage type: float16 (half the disk) or float32"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1"),
    workers: int = typer.Option(1, "--workers", min=0, help="image-decoding processes"),
) -> None:  # fmt: skip
    """Precompute the vision vocabulary's outputs for `data.vision_features: true` (resumable)."""
    from vary.data.dataset import DataError
    from vary.modeling.loading import load_model
    from vary.modeling.official import CheckpointError
    from vary.train.features import compute_features

    try:
        vision = load_model(model).to(device)
        vision.enable_fast_cpu_path(device == "cpu")
        for source in data:
            folder = compute_features(vision, source, batch_size=batch_size, dtype=dtype, workers=workers)
            typer.echo(f"wrote {folder}")
    except (DataError, CheckpointError, FileNotFoundError, ValueError) as err:
        fail(err)


@train_app.command("warmup")
def warmup_cmd(
    data: list[str] = typer.Option(..., "--data", help="shard folder (repeatable, equal weights)"),
    heldout: str = typer.Option(..., "--heldout", help="held-out shard folder, scored every --eval-every steps"),
    out: Path = typer.Option(..., "--out", help="model folder to write (decoder still random)"),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="tokenizer folder; default: a character tokenizer of the data"),
    steps: int = typer.Option(600, "--steps", min=1),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    lr: float = typer.Option(1e-3, "--lr"),
    eval_every: int = typer.Option(100, "--eval-every", min=1),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(1, "--workers", min=0, help="DataLoader workers"),
    device: str | None = typer.Option(None, "--device", help="default cuda if available (bf16 autocast), else cpu"),
    pixel_weight: float = typer.Option(0.0, "--pixel-weight", help="also redraw each token's 64x64 cell, MAE-style"),
    cell_weight: float = typer.Option(0.0, "--cell-weight", help="also name each cell's characters (data with --option boxes=true)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:  # fmt: skip
    """Warm up a from-scratch nano vision vocabulary (for configs/nano-ocr-read.yaml's init.vary_tiny)."""
    from vary.data.dataset import DataError
    from vary.modeling.tokenizer import TokenizerError
    from vary.train.vision_warmup import WarmupConfig, WarmupError, warm_up

    config = WarmupConfig(data=data, heldout=heldout, out=out, tokenizer=tokenizer, steps=steps, batch_size=batch_size,
                          lr=lr, eval_every=eval_every, seed=seed, workers=workers, pixel_weight=pixel_weight,
                          cell_weight=cell_weight, **({"device": device} if device else {}))  # fmt: skip
    try:
        typer.echo(f"saved {warm_up(config, progress=not quiet)}")
    except (WarmupError, DataError, TokenizerError, FileNotFoundError) as err:
        fail(err)
