"""Turn an evaluation run into what people read: a markdown report with tables shaped like the paper's
Table 1/2, a PNG plot, the results JSON, and a side-by-side comparison of two runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vary.eval.results import EvalRun, summarize

# (score key, column header); rates print as percentages like the paper, ED as a fraction.
PAGE_COLUMNS = [
    ("edit_distance", "Edit Distance ↓"),
    ("f1", "F1 ↑"),
    ("precision", "Precision ↑"),
    ("recall", "Recall ↑"),
    ("bleu", "BLEU ↑"),
    ("meteor", "METEOR ↑"),
    ("char_f1", "char F1 ↑"),
]
MARKDOWN_COLUMNS = [
    ("edit_distance", "page ED ↓"),
    ("f1", "page F1 ↑"),
    *[(f"{part}/{key}", f"{part} {label}") for part in ("text", "formula", "table")
      for key, label in (("edit_distance", "ED ↓"), ("f1", "F1 ↑"))],
]  # fmt: skip
QA_COLUMNS = {"anls": [("anls", "ANLS ↑")], "relaxed": [("relaxed_accuracy", "Relaxed accuracy ↑")]}
NATURE_COLUMNS = [("nature_accuracy", "Nature sentence accuracy ↑")]
CHART_COLUMNS = [
    ("chart_match", "Exact dict match ↑"),
    ("chart_value_accuracy", "Value accuracy ↑"),
    ("chart_parses", "Parses ↑"),
]
# family -> headline score key (plot.png), and its name on the plot
PRIMARY = {"page": "f1", "markdown": "f1", "anls": "anls", "relaxed": "relaxed_accuracy"}
PRIMARY |= {"nature": "nature_accuracy", "chart": "chart_match"}
PRIMARY_LABEL = {"page": "F1", "markdown": "F1", "anls": "ANLS", "relaxed": "relaxed acc."}
PRIMARY_LABEL |= {"nature": "nature acc.", "chart": "chart match"}
# One line each in the report's conventions, for the families a run holds.
FAMILY_NOTES = {
    "nature": "Nature sentence accuracy (natural photos): the output is one of the paper's five nature "
    "sentences (any of them), case-insensitive, whitespace collapsed, trailing punctuation ignored.",
    "chart": "Charts: Parses = the output is a python-dict chart answer; Exact dict match = same series and "
    "categories as the reference and every number equal (1e-6 relative), title not compared; "
    "Value accuracy = share of the reference's numbers found under the same series and category.",
}


def columns_for(metric: str) -> list[tuple[str, str]]:
    if metric == "markdown":
        return MARKDOWN_COLUMNS
    if metric == "nature":
        return NATURE_COLUMNS
    if metric == "chart":
        return CHART_COLUMNS
    return QA_COLUMNS.get(metric, PAGE_COLUMNS)


def fmt(key: str, value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if key.endswith("edit_distance") else f"{100 * value:.2f}"


def _subsets(summary: dict) -> dict[str, str]:
    """subset -> metric family, in first-seen order."""
    out: dict[str, str] = {}
    for per_subset in summary.values():
        for subset, row in per_subset.items():
            out.setdefault(subset, row["metric"])
    return out


def subset_table(summary: dict, subset: str, metric: str) -> list[str]:
    """One markdown table: a row per model, the metric family's columns, counts and speed."""
    cols = columns_for(metric)
    lines = [
        "| model | n | " + " | ".join(h for _, h in cols) + " | s/image | errors |",
        "|---|---:|" + "---:|" * len(cols) + "---:|---:|",
    ]
    for model, per_subset in summary.items():
        row = per_subset.get(subset)
        if row is None:
            continue
        if row["n"] == 0:  # every sample unsupported: say so instead of printing zeros
            lines.append(f"| {model} | 0 | " + " | ".join("n/a" for _ in cols) + " | — | — |")
            continue
        cells = [fmt(key, row.get(key)) for key, _ in cols]
        secs = "—" if row["seconds"] is None else f"{row['seconds']:.2f}"
        lines.append(f"| {model} | {row['n']} | " + " | ".join(cells) + f" | {secs} | {row['errors']} |")
    return lines


def render_markdown(run: EvalRun) -> str:
    meta, summary = run.meta, run.summary()
    out = [
        "# Evaluation report",
        "",
        f"- dataset: `{meta.get('dataset', '?')}` ({meta.get('records', '?')} records"
        + (f", limit {meta['limit']}" if meta.get("limit") else "")
        + f"); models: {', '.join(f'`{m}`' for m in meta.get('models', []))}",
        f"- created {meta.get('created', '?')} on {meta.get('machine', '?')}",
        "- conventions: "
        + (
            "**Fox/GOT-compatible** (`--fox-compatible`): roles swapped as in their public scripts, so Precision is "
            "the true recall and BLEU/METEOR score the reference against the prediction"
            if meta.get("fox_compatible")
            else "metrics computed (prediction, reference) the right way round; `--fox-compatible` reproduces "
            "the swapped convention of the public Fox/GOT scripts"
        )
        + f"; {meta.get('unicode_normalization', 'NFKC')} normalisation of both sides",
        "- METEOR: "
        + (
            "WordNet synonyms + exact + stem matching"
            if meta.get("meteor") == "wordnet"
            else "**exact + stem matching only** (WordNet data not installed: `python -m vary.eval.nltk_data`)"
        ),
        "- Edit distance: normalized, lower is better; other scores in %. F1/Precision/Recall over token sets "
        "(whitespace words; jieba words when Chinese is present); char F1 over characters.",
        *[f"- {FAMILY_NOTES[m]}" for m in dict.fromkeys(_subsets(summary).values()) if m in FAMILY_NOTES],
        "",
    ]
    for subset, metric in _subsets(summary).items():
        out += [f"## {subset} ({metric})", "", *subset_table(summary, subset, metric), ""]
    langs = [(m, sub, row["langs"]) for m, subs in summary.items() for sub, row in subs.items() if row.get("langs")]
    if langs:  # a baseline's language is part of its setting: say which one ran
        out += ["## Languages the OCR engines ran", ""]
        out += [f"- `{m}` on `{sub}`: " + ", ".join(f"{k} {n}" for k, n in counts.items()) for m, sub, counts in langs]
        out.append("")
    errors = [s for s in run.samples if s["status"] == "error"]
    if errors:
        out += ["## Prediction errors (scored as empty predictions)", ""]
        out += [f"- `{s['model']}` on `{s['subset']}/{s['id']}`: {s['error']}" for s in errors[:50]]
        out += [f"- ... and {len(errors) - 50} more (see results.json)"] if len(errors) > 50 else []
        out.append("")
    if run.data_errors:
        out += ["## Data errors (records skipped for every model)", ""]
        out += [f"- `{e['subset']}/{e['id']}`: {e['error']}" for e in run.data_errors[:50]]
        out += [f"- ... and {len(run.data_errors) - 50} more (see results.json)"] if len(run.data_errors) > 50 else []
        out.append("")
    return "\n".join(out)


def plot_summary(summary: dict, path: Path) -> Path:
    """Grouped bars, one group per subset, one bar per model: edit distance (page/markdown subsets) and
    the primary score (PRIMARY: F1, ANLS, relaxed accuracy, nature accuracy or chart match)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    subsets = _subsets(summary)
    models = list(summary)
    labels = dict.fromkeys(PRIMARY_LABEL.get(m, m) for m in subsets.values())
    panels = [("primary", f"score (%) ↑: {' / '.join(labels)}")]
    if any(m in ("page", "markdown") for m in subsets.values()):
        panels.insert(0, ("edit_distance", "normalized edit distance ↓"))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6, 1.6 * len(subsets) * len(panels) + 2), 4), squeeze=False)
    x = np.arange(len(subsets))
    width = 0.8 / max(1, len(models))
    for ax, (panel, title) in zip(axes[0], panels, strict=True):
        for i, model in enumerate(models):
            values = []
            for subset, metric in subsets.items():
                row = summary[model].get(subset) or {}
                key = PRIMARY.get(metric, "f1") if panel == "primary" else "edit_distance"
                value = row.get(key) if row.get("n") else None
                values.append(np.nan if value is None else value * (100 if panel == "primary" else 1))
            ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, label=model)
        ax.set_xticks(x, list(subsets), rotation=20, ha="right")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(run: EvalRun, out_dir: str | Path) -> dict[str, Path]:
    """results.json (every prediction and score), report.md and plot.png in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "report": out_dir / "report.md", "plot": out_dir / "plot.png"}
    paths["json"].write_text(json.dumps(run.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")
    paths["report"].write_text(render_markdown(run), encoding="utf-8")
    plot_summary(run.summary(), paths["plot"])
    return paths


def load_run(path: str | Path) -> EvalRun:
    path = Path(path)
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read results JSON ({e})") from e
    try:
        return EvalRun.from_json(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def merge_runs(runs: list[EvalRun]) -> EvalRun:
    """One run holding every model of `runs` (scored on the same dataset), e.g. a new checkpoint + old baselines.

    Raises ValueError when the runs scored different datasets or a model name appears in two runs.
    """
    if not runs:
        raise ValueError("merge needs at least one results.json")
    datasets = {(r.meta.get("dataset"), r.meta.get("limit")) for r in runs}
    if len(datasets) > 1:
        raise ValueError(f"the runs scored different datasets (dataset, limit): {sorted(map(str, datasets))}")
    seen: dict[str, int] = {}
    for i, r in enumerate(runs):
        for model in dict.fromkeys(s["model"] for s in r.samples):
            if model in seen:
                raise ValueError(f"model {model!r} is in run {seen[model] + 1} and run {i + 1}; rename or drop one")
            seen[model] = i
    meta = {
        **runs[0].meta,
        "model_specs": [m for r in runs for m in r.meta.get("model_specs", [])],
        "merged": len(runs),
    }
    return EvalRun(meta=meta, samples=[s for r in runs for s in r.samples], data_errors=runs[0].data_errors)


def compare_runs(a: EvalRun, b: EvalRun, label_a: str = "A", label_b: str = "B") -> str:
    """Markdown: both runs' scores side by side on the (subset, id) pairs they share, with B - A when each
    run holds one model. Records present in only one run are counted, not scored."""
    ids_a = {(s["subset"], s["id"]) for s in a.samples}
    ids_b = {(s["subset"], s["id"]) for s in b.samples}
    common = ids_a & ids_b
    if not common:
        raise ValueError(f"{label_a} and {label_b} share no (subset, id) pairs: they were run on different data")
    sum_a = summarize([s for s in a.samples if (s["subset"], s["id"]) in common])
    sum_b = summarize([s for s in b.samples if (s["subset"], s["id"]) in common])
    out = [
        f"# {label_a} vs {label_b}",
        "",
        f"- {len(common)} records in common; {len(ids_a - ids_b)} only in {label_a}, "
        f"{len(ids_b - ids_a)} only in {label_b} (left out)",
    ]
    for key in ("fox_compatible", "meteor", "unicode_normalization"):
        if a.meta.get(key) != b.meta.get(key):
            out.append(f"- **warning**: {key} differs ({a.meta.get(key)} vs {b.meta.get(key)}): scores not comparable")
    out.append("")
    columns = [(f"{label_a}: {m}", row) for m, row in sum_a.items()] + [
        (f"{label_b}: {m}", row) for m, row in sum_b.items()
    ]
    with_delta = len(sum_a) == 1 and len(sum_b) == 1
    subsets = {**_subsets(sum_a), **_subsets(sum_b)}
    for subset, metric in subsets.items():
        header = "| metric | " + " | ".join(name for name, _ in columns) + " |" + (" Δ (B − A) |" if with_delta else "")
        out += [f"## {subset}", "", header, "|---|" + "---:|" * (len(columns) + with_delta)]
        for key, label in [*columns_for(metric), ("seconds", "s/image ↓")]:
            values = [row.get(subset, {}).get(key) for _, row in columns]
            cells = [_fmt_any(key, v) for v in values]
            if with_delta:
                va, vb = values
                cells.append("—" if va is None or vb is None else _fmt_any(key, vb - va, signed=True))
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _fmt_any(key: str, value: float | None, signed: bool = False) -> str:
    """`fmt` plus seconds (2 decimals) and an explicit sign for differences."""
    if value is None:
        return "—"
    text = f"{value:.2f}" if key == "seconds" else fmt(key, value)
    return f"+{text}" if signed and value >= 0 else text
