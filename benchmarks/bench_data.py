"""Samples per second per worker for every data generator at 1024 px (make + image encoding).

    python benchmarks/bench_data.py                 # all generators, 40 samples each (latex: 6)
    python benchmarks/bench_data.py --kinds pages tables --n 100 --engine-workers 2

The pdf generator runs on a corpus of dense text PDFs (English and Chinese) made here with PyMuPDF;
natural runs on scikit-image's bundled photos. Languages alternate en/zh. The first `--warmup`
samples (default 10; latex 1) are not timed: they load fonts and fill the per-process glyph caches,
a one-off cost in a real run of thousands of samples per worker. `--engine-workers W` also times
a full `generate` run with W worker processes.
Targets per core (issue 3): pages and tables >= 15/s, charts >= 5/s, pdf >= 10/s, latex >= 1/s.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import pymupdf

from vary.data.engine import GenerateConfig, generate, sample_rng
from vary.data.generators import GENERATORS, get_generator_class
from vary.data.sample import SkipSample
from vary.data.shards import encode_sample
from vary.data.text import TextCorpus

TARGETS = {"pages": 15, "tables": 15, "charts": 5, "pdf": 10, "latex": 1}


def make_pdf_corpus(folder: Path, pages: int = 30) -> Path:
    """Dense one-column text pages, alternating English and Chinese, as a few multi-page PDFs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    corpora = {"en": TextCorpus("en"), "zh": TextCorpus("zh")}
    for f in range(3):
        doc = pymupdf.open()
        for p in range(pages // 3):
            lang = "zh" if p % 2 else "en"
            page = doc.new_page(width=595, height=842)
            text = "\n\n".join(corpora[lang].paragraph(rng, 6) for _ in range(8))
            font = "china-s" if lang == "zh" else "helv"
            page.insert_textbox(pymupdf.Rect(50, 50, 545, 792), text, fontsize=9, fontname=font)
        doc.save(folder / f"corpus_{f}.pdf")
    return folder


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (latex runs xelatex as a child)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def bench_one(kind: str, n: int, size: int, input_dir: Path | None, warmup: int) -> tuple[float, float, int]:
    """(samples per CPU second, samples per wall second, samples) for generator.make + encode."""
    cls = get_generator_class(kind)
    kwargs = {"count": n + warmup, "lang": "en", "size": size}
    if input_dir is not None:
        kwargs["input_dir"] = input_dir
    generator = cls(**kwargs)
    fmt = getattr(generator, "image_format", "png")
    made, start = 0, None
    for i in range(min(n + warmup, len(generator))):
        if i == warmup:
            start, cpu_start = time.perf_counter(), cpu_seconds()
        lang = "zh" if i % 2 else "en"
        if getattr(generator, "lang", "en") != lang and kind not in ("pdf", "natural"):
            generator = cls(**{**kwargs, "lang": lang})  # alternate languages (generators are cheap to build)
        try:
            sample = generator.make(i, sample_rng(0, kind, lang, i))
        except SkipSample:
            continue
        sample.key = f"{kind}-{i}"
        encode_sample(sample, fmt)
        made += i >= warmup
    return made / (cpu_seconds() - cpu_start), made / (time.perf_counter() - start), made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", nargs="*", default=list(GENERATORS))
    ap.add_argument("--n", type=int, default=40, help="samples per generator (latex: n // 6)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=10, help="untimed samples first (latex: 1)")
    ap.add_argument("--engine-workers", type=int, default=0, help="also time a full run with W workers")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        pdf_dir = make_pdf_corpus(Path(tmp) / "pdfs", pages=max(30, args.n + args.warmup + 3))
        print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; size {args.size}px")
        print("per worker = samples per CPU-second of one process (what one dedicated core does);")
        print("wall = samples per elapsed second here (lower when other work shares the cores)")
        print(f"{'generator':<10} {'samples/s/worker':>17} {'wall/s':>7} {'samples':>8} {'target':>7}")
        for kind in args.kinds:
            n = max(2, args.n // 6) if kind == "latex" else args.n
            try:
                warmup = 1 if kind == "latex" else args.warmup
                rate, wall, made = bench_one(kind, n, args.size, pdf_dir if kind == "pdf" else None, warmup)
            except Exception as e:  # a generator missing its system packages (e.g. TeX) is reported, not fatal
                print(f"{kind:<10} {'unavailable':>17}  ({type(e).__name__}: {str(e)[:80]})")
                continue
            target = TARGETS.get(kind)
            mark = "" if target is None else ("  ok" if rate >= target else "  BELOW TARGET")
            print(f"{kind:<10} {rate:>17.1f} {wall:>7.1f} {made:>8} {target or '-':>7}{mark}")
        if args.engine_workers:
            for kind in ("pages", "tables"):
                out = Path(tmp) / f"run-{kind}"
                count = args.n * args.engine_workers
                t = time.perf_counter()
                generate(GenerateConfig(kind, out, count=count, lang="mix", workers=args.engine_workers,
                                        shard_size=max(1, count // 4), size=args.size, progress=False))  # fmt: skip
                rate = count / (time.perf_counter() - t)
                print(
                    f"engine {kind}: {rate:.1f} samples/s with {args.engine_workers} workers (incl. start-up, tar, sha256)"
                )


if __name__ == "__main__":
    main()
