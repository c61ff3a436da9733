"""The bundled reader's speed: seconds per OCR block and per bar chart, with and without the decoding aids.

Blocks and charts are drawn here by the data engine (its own text: no Debian prose packages needed), at the
bundled model's training sizes (512 px blocks of 1-8 lines, simple bar charts at 2.4x matplotlib's type). Each
configuration reads the same images after one warm-up read; the Chinese bigrams are built before timing (their
~1 s one-time load is printed on its own).

    python benchmarks/bench_reader.py [--blocks 16] [--charts 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from bench_model import machine  # benchmarks/ is on sys.path when this script runs
from vary.data.generators.blocks import BlocksGenerator
from vary.data.generators.charts import ChartGenerator
from vary.data.sample import SkipSample
from vary.infer.pipeline import Pipeline
from vary.modeling.char_bigrams import CharBigrams


def blocks(lang: str, n: int) -> list:
    generator = BlocksGenerator(n, lang=lang, size=512, lines="1-8", font="0.05-0.08")
    return [generator.make(i, random.Random(i)).image for i in range(n)]


def charts(lang: str, n: int) -> list:
    generator = ChartGenerator(count=n, lang=lang, size=512, kinds="bar", simple=True, font_scale=2.4)
    images = []
    for i in range(10 * n):
        try:
            images.append(generator.make(i, random.Random(i)).image)
        except SkipSample:  # a chart whose text overlaps: drawn again with the next seed
            continue
        if len(images) == n:
            break
    return images


def seconds_each(pipe: Pipeline, images: list, task: str) -> float:
    pipe.run(images[0], task)  # warm-up
    start = time.perf_counter()
    for image in images:
        pipe.run(image, task)
    return (time.perf_counter() - start) / len(images)


def main(n_blocks: int, n_charts: int, threads: int) -> None:
    torch.set_num_threads(threads)
    print(f"{machine()}; {threads} threads")
    pipe = Pipeline.from_pretrained()
    start = time.perf_counter()
    CharBigrams.from_jieba()
    print(f"Chinese bigrams from jieba's dictionary, once per process: {time.perf_counter() - start:.2f} s")
    reader = pipe.lexicon_reader
    chinese = reader.chinese
    configs = {
        "as shipped (word list + Chinese bigrams)": (reader, chinese),
        "word list only": (reader, None),
        "neither": (None, None),
    }
    work = {f"{lang} block": (blocks(lang, n_blocks), "ocr") for lang in ("en", "zh")}
    work |= {f"{lang} chart": (charts(lang, n_charts), "chart") for lang in ("en", "zh")}
    print(f"| reading | {' | '.join(f'{name} s' for name in work)} |")
    print(f"|---|{'---:|' * len(work)}")
    for name, (lexicon, bigrams) in configs.items():
        if lexicon is not None:
            lexicon.chinese = bigrams
        pipe.__dict__["lexicon_reader"] = lexicon  # the cached property, set per configuration
        times = [seconds_each(pipe, images, task) for images, task in work.values()]
        print(f"| {name} | {' | '.join(f'{t:.3f}' for t in times)} |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--charts", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    main(args.blocks, args.charts, args.threads)
