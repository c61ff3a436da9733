"""The bar our models must beat: Tesseract and RapidOCR on held-out synthetic pages (English, Chinese).

Pages come from the data engine's `pages` generator with a seed no training recipe uses (HELDOUT_SEED), so
they are drawn from the training distribution but are not training samples. Prints, per engine and
language, the normalized edit distance, F1 and seconds per page, and writes the usual report files.

    python benchmarks/bench_eval.py                      # 3 pages per language, ~2 minutes on 2 cores
    python benchmarks/bench_eval.py --pages 10 --out reports/baselines
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

from vary.data.engine import sample_key, sample_rng
from vary.data.generators import get_generator
from vary.eval.baselines import get_predictor
from vary.eval.datasets import EvalRecord
from vary.eval.report import write_outputs
from vary.eval.runner import evaluate

HELDOUT_SEED = 231206109  # the paper's arXiv id; training seeds are small integers


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (Tesseract runs as a subprocess)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class CpuTimed:
    """Wraps a predictor to record CPU seconds per call: wall time is unreliable on a shared machine."""

    def __init__(self, predictor):
        self.inner, self.name, self.cpu = predictor, predictor.name, []

    def predict(self, image, task, question=None):
        start = cpu_seconds()
        try:
            return self.inner.predict(image, task, question)
        finally:
            self.cpu.append(cpu_seconds() - start)


def heldout_pages(lang: str, count: int, size: int) -> list[EvalRecord]:
    generator = get_generator("pages", count=count, lang=lang, size=size)
    records = []
    for i in range(count):
        sample = generator.make(i, sample_rng(HELDOUT_SEED, "pages", lang, i))
        records.append(
            EvalRecord(id=sample_key("pages", lang, i), reference=sample.target, task="ocr",
                       subset=f"pages-{lang}", image=sample.image, meta={"lang": lang})
        )  # fmt: skip
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=3, help="pages per language")
    parser.add_argument("--langs", nargs="+", default=["en", "zh"])
    parser.add_argument("--size", type=int, default=1024, help="page height in pixels")
    parser.add_argument("--engines", nargs="+", default=["tesseract", "rapidocr"])
    parser.add_argument("--out", type=Path, default=None, help="also write report.md/results.json/plot.png here")
    args = parser.parse_args()

    t0 = time.perf_counter()
    records = [r for lang in args.langs for r in heldout_pages(lang, args.pages, args.size)]
    print(f"rendered {len(records)} held-out pages in {time.perf_counter() - t0:.1f} s "
          f"(seed {HELDOUT_SEED}, height {args.size}px)")  # fmt: skip
    predictors = [CpuTimed(get_predictor(spec)) for spec in args.engines]
    run = evaluate(records, predictors, meta={"dataset": f"pages generator, seed {HELDOUT_SEED}", "limit": None})

    # CPU seconds per page, by (engine, subset), from the wrappers (calls happen in record order)
    cpu = {p.name: {} for p in predictors}
    for p in predictors:
        for record, secs in zip(records, p.cpu, strict=True):
            cpu[p.name].setdefault(record.subset, []).append(secs)
    table = [f"{'engine':<12}{'set':<10}{'pages':>6}{'edit dist':>11}{'F1':>8}{'char F1':>9}{'wall s':>8}{'CPU s':>7}"]
    for model, per_subset in run.summary().items():
        for subset, row in per_subset.items():
            cpu_mean = sum(cpu[model][subset]) / len(cpu[model][subset])
            table.append(
                f"{model:<12}{subset:<10}{row['n']:>6}{row['edit_distance']:>11.3f}{100 * row['f1']:>8.2f}"
                f"{100 * row['char_f1']:>9.2f}{row['seconds']:>8.2f}{cpu_mean:>7.2f}"
            )
    note = (
        f"per page; F1 over jieba/whitespace token sets, %; METEOR: {run.meta['meteor']}; {run.meta['machine']}; "
        f"load average {os.getloadavg()[0]:.1f} at the end (wall seconds grow with load, CPU seconds much less)"
    )
    print("\n" + "\n".join(table) + f"\n({note})")
    if args.out:
        paths = write_outputs(run, args.out)
        with paths["report"].open("a", encoding="utf-8") as f:  # the benchmark's own view, CPU time included
            f.write("\n## benchmarks/bench_eval.py\n\n```\n" + "\n".join(table) + f"\n```\n({note})\n")
        print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
