"""`vary data ...`: generate shards, preview them, export LLaVA JSON, print statistics."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from vary.cli_errors import fail

app = typer.Typer(help="Make, inspect and export training data.", no_args_is_help=True)


def _parse_options(options: list[str]) -> dict[str, str]:
    parsed = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--option must look like key=value, got {item!r}")
        parsed[key.strip().replace("-", "_")] = value
    return parsed


# The kinds whose renderers draw with vary.data.fonts (latex uses TeX's fonts; pdf and natural draw no text).
_FONT_KINDS = ("pages", "blocks", "tables", "charts")


def _warn_missing_fonts(kind: str, lang: str) -> None:
    """Say when some, not all, of a language's font families are missing (none at all is an error later)."""
    from vary.data.fonts import FAMILIES, missing_families

    if kind not in _FONT_KINDS:
        return
    for code in ("en", "zh") if lang == "mix" else (lang,):
        missing = missing_families(code) if code in FAMILIES else []
        if missing and len(missing) < len(FAMILIES[code]):
            typer.echo(
                f"warning: {code} fonts {', '.join(missing)} are not installed: the samples use the other "
                "families only, so this seed gives other data than on a machine with all of them "
                "(`bash scripts/setup.sh` installs them)",
                err=True,
            )


@app.command("generate")
def generate_command(
    kind: str = typer.Argument(..., help="pdf, pages, blocks, tables, charts, latex or natural"),
    out: Path = typer.Option(..., "--out", help="output folder for shards + manifest.json"),
    count: int | None = typer.Option(None, "--count", help="samples to make (pdf/natural: cap; default all inputs)"),
    lang: str = typer.Option("en", "--lang", help="en, zh or mix (mix splits --count over both languages)"),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(max(1, (os.cpu_count() or 1)), "--workers", help="worker processes"),
    shard_size: int = typer.Option(1000, "--shard-size", help="samples per shard"),
    shard_range: str | None = typer.Option(None, "--shard-range", help="A:B: make only shards A..B-1 (array jobs)"),
    input_dir: Path | None = typer.Option(None, "--input-dir", help="folder of PDFs (pdf) or photos (natural)"),
    size: int = typer.Option(1024, "--size", help="longest image side in pixels"),
    option: list[str] = typer.Option([], "--option", "-o", help="generator option key=value (repeatable)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Generate shards. Rerunning with the same arguments completes only the missing shards."""
    from vary.data.engine import DataEngineError, GenerateConfig, generate, parse_shard_range

    _warn_missing_fonts(kind, lang)
    try:
        cfg = GenerateConfig(
            kind=kind,
            out=out,
            count=count,
            lang=lang,
            seed=seed,
            workers=workers,
            shard_size=shard_size,
            shard_range=parse_shard_range(shard_range),
            input_dir=input_dir,
            size=size,
            options=_parse_options(option),
            progress=not quiet,
        )
        report = generate(cfg)
    except DataEngineError as err:
        fail(err)
    typer.echo(
        f"{kind}: wrote {len(report.written_shards)} shard(s), {report.samples} samples; "
        f"{len(report.existing_shards)} shard(s) already done; manifest {report.manifest}"
    )
    if report.skipped:
        typer.echo(f"skipped {len(report.skipped)} input(s)/sample(s):")
        for item in report.skipped[:50]:
            where = item.get("input", f"index {item.get('index')}")
            typer.echo(f"  [{item['series']}] {where}: {item['reason']}")
        if len(report.skipped) > 50:
            typer.echo(f"  ... and {len(report.skipped) - 50} more (see manifest.json)")
    if report.samples == 0 and not report.existing_shards:
        fail("no samples could be made from these inputs", 1)


@app.command("preview")
def preview_command(
    data: Path = typer.Argument(..., help="shard folder or .tar file"),
    out: Path = typer.Option(Path("preview.png"), "--out"),
    n: int = typer.Option(12, "--n", help="number of samples"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write a contact sheet of random samples with their targets."""
    from vary.data.preview import contact_sheet

    try:
        path = contact_sheet(data, out, n=n, seed=seed)
    except (FileNotFoundError, ValueError) as err:
        fail(err)
    typer.echo(f"wrote {path}")


@app.command("export-llava")
def export_llava_command(
    data: Path = typer.Argument(..., help="shard folder or .tar file"),
    out: Path = typer.Option(..., "--out", help="folder for images/ and the JSON file"),
    name: str = typer.Option("data.json", "--name", help="JSON file name"),
) -> None:
    """Export shards as the official Vary/LLaVA conversation JSON plus image files."""
    from vary.data.export import export_llava

    try:
        result = export_llava(data, out, name=name)
    except (FileNotFoundError, ValueError) as err:
        fail(err)
    typer.echo(f"wrote {result.samples} conversations to {result.json_path} ({result.corrupt} corrupt skipped)")


@app.command("stats")
def stats_command(
    data: Path = typer.Argument(..., help="output folder of `vary data generate`"),
    verify: bool = typer.Option(False, "--verify", help="also check every shard's sha256 and decode it"),
    as_json: bool = typer.Option(False, "--json", help="print the statistics as JSON"),
) -> None:
    """Counts per kind/language, skipped inputs, completeness (and integrity with --verify)."""
    from vary.data.export import dataset_stats

    try:
        stats = dataset_stats(data, verify=verify)
    except (FileNotFoundError, ValueError) as err:
        fail(err)
    if as_json:
        typer.echo(json.dumps(stats, ensure_ascii=False, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{data}: {stats['total_samples']} samples in {stats['shards']} shards")
    for col in ("series", "samples", "shards", "complete", "skipped inputs", "skipped samples"):
        table.add_column(col)
    for name, s in stats["series"].items():
        table.add_row(name, str(s["samples"]), f"{s['shards']}/{s['num_shards']}", str(s["complete"]),
                      str(s["skipped_inputs"]), str(s["skipped_samples"]))  # fmt: skip
    Console().print(table)
    for kind, langs in stats["counts"].items():
        typer.echo(f"{kind}: " + ", ".join(f"{lang} {n}" for lang, n in langs.items()))
    if verify:
        typer.echo(
            f"verify: {stats['verify']['bad_shards']} bad shard(s), {stats['verify']['corrupt']} corrupt member(s)"
        )
        for err in stats["verify"]["errors"][:20]:
            typer.echo(f"  {err}")
        if stats["verify"]["bad_shards"] or stats["verify"]["corrupt"]:
            raise typer.Exit(1)


@app.command("lexicon")
def lexicon_command(
    out: Path = typer.Argument(..., help="file to write (lexicon.txt in a model folder is read with the model)"),
    text: list[Path] = typer.Option(
        None,
        "--text",
        help="plain-text files to take the words from (repeatable); default: the training partition of the real prose",
    ),
    min_count: int = typer.Option(2, "--min-count", min=1, help="words seen fewer times are left out"),
) -> None:
    """Write the English word list a reading head corrects its words with: one `word count` line per word
    (vary.modeling.lexicon), from your documents' text or from the real prose's training partition (never its
    held-out passages)."""
    from vary.data.prose import ProseCorpus, ProseNotInstalledError
    from vary.modeling.lexicon import Lexicon

    try:
        if text:
            texts = [path.read_text(encoding="utf-8", errors="replace") for path in text]
        else:
            texts = ProseCorpus("en", "train").passages
    except (OSError, ProseNotInstalledError, ValueError) as err:
        fail(err)
    lexicon = Lexicon.from_texts(texts, min_count)
    if not len(lexicon):
        fail(f"no English word is used {min_count} times or more in the text given: nothing to write")
    lexicon.save(out)
    typer.echo(f"wrote {out}: {len(lexicon)} words")
