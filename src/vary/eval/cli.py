"""`vary eval run` and `vary eval compare`: thin wrappers over vary.eval.runner / vary.eval.report."""

from __future__ import annotations

from pathlib import Path

import typer

from vary.cli_errors import fail

eval_app = typer.Typer(help="Score models and OCR baselines with the paper's metrics.", no_args_is_help=True)


@eval_app.command("run")
def run_cmd(
    data: Path = typer.Option(..., "--data", help="dataset: shards (.tar / folder), DocVQA or ChartQA .json, or a folder of images + .txt/.md"),
    model: list[str] = typer.Option(..., "--model", help="tesseract, tesseract:LANG, rapidocr, a model directory, a hub id org/name[@revision] or a name from `vary models`; repeatable"),
    out: Path = typer.Option(..., "--out", help="output folder for report.md, results.json, plot.png"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="score only the first N records"),
    fox_compatible: bool = typer.Option(False, "--fox-compatible", help="swap (prediction, reference) as the public Fox/GOT scripts do"),
    dataset_format: str = typer.Option("auto", "--format", help="auto, shards, docvqa, chartqa or folder"),
) -> None:  # fmt: skip
    """Score one or more models on a dataset and write a report."""
    from vary.eval.report import render_markdown
    from vary.eval.runner import run_eval

    try:
        run, paths = run_eval(
            data, model, out, limit=limit, fox_compatible=fox_compatible, dataset_format=dataset_format
        )
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        fail(e)
    typer.echo(render_markdown(run))
    typer.echo("\n".join(f"wrote {p}" for p in paths.values()))


@eval_app.command("compare")
def compare_cmd(
    a: Path = typer.Argument(..., help="results.json of the first run"),
    b: Path = typer.Argument(..., help="results.json of the second run"),
    out: Path | None = typer.Option(None, "--out", help="also write the comparison to this markdown file"),
) -> None:
    """Put two runs side by side on the records they share."""
    from vary.eval.report import compare_runs, load_run

    try:
        text = compare_runs(load_run(a), load_run(b), label_a=str(a), label_b=str(b))
    except ValueError as e:
        fail(e)
    typer.echo(text)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")


@eval_app.command("merge")
def merge_cmd(
    runs: list[Path] = typer.Argument(..., help="results.json files of runs on the same dataset"),
    out: Path = typer.Option(..., "--out", help="output folder for the merged report.md, results.json, plot.png"),
) -> None:
    """Put the models of several runs into one report (score a new model, keep the baselines' run)."""
    from vary.eval.report import load_run, merge_runs, render_markdown, write_outputs

    try:
        run = merge_runs([load_run(p) for p in runs])
    except ValueError as e:
        fail(e)
    paths = write_outputs(run, out)
    typer.echo(render_markdown(run))
    typer.echo("\n".join(f"wrote {p}" for p in paths.values()))
