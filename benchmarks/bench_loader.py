"""Training samples per second per data-loader worker: shard read + PNG decode + resize + normalize + tokenize
(VaryTrainDataset.__getitem__), then batching (Collator). On a GPU the loader, not the model, can be the limit:
the nano-ocr runs on an H200 trained ~900 samples/s with 14-15 workers (reports/training/nano-ocr).

    python benchmarks/bench_loader.py                         # 400 blocks of 1-8 lines at 384 px, made here
    python benchmarks/bench_loader.py --data data/nano-ocr/blocks-en-25k-s39 --n 2000
    python benchmarks/bench_loader.py --augment               # with the document augmentation

The processor is the nano-ocr-read recipe's (384 px, a character tokenizer trained on the data, as `vary train
run` builds them; the loader never runs the model, so no weights are needed), or a model folder's with `--model`.
One process, one thread: a worker's rate; N workers give about N times this when N cores are free.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import torch

from vary.config import VaryConfig
from vary.data.dataset import Collator, VaryTrainDataset, open_source
from vary.data.engine import GenerateConfig, generate
from vary.modeling.processor import VaryProcessor
from vary.modeling.tokenizer import load_tokenizer
from vary.train.init import build_config, train_tokenizer
from vary.train.recipes import load_recipe

RECIPE = "nano-ocr-read"


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def make_blocks(folder: Path, count: int, size: int) -> Path:
    options = {"lines": "1-8", "font": "0.06-0.10"}  # the blocks the nano-ocr runs train on
    generate(GenerateConfig("blocks", folder, count=count, lang="en", size=size, workers=1, progress=False,
                            options=options))  # fmt: skip
    return folder


def recipe_processor(source, folder: Path) -> VaryProcessor:
    """The recipe's config and tokenizer, built from `source` the way `vary train run RECIPE` builds them."""
    recipe = load_recipe(RECIPE)
    vocab = recipe.model.config["text_config"]["vocab_size"]
    texts = [t for t in source.texts(recipe.data.tokenizer_corpus) if t]
    train_tokenizer(texts, vocab, folder, recipe.model.tokenizer_type)
    tokenizer = load_tokenizer(folder)
    return VaryProcessor(build_config(recipe, tokenizer), tokenizer)


def bench(dataset: VaryTrainDataset, records: int, batch: int, pad_id: int) -> tuple[float, float]:
    """(samples per CPU second, samples per wall second) over `records` samples in batches of `batch`."""
    collate = Collator(dataset, pad_token_id=pad_id)
    order = random.Random(0).sample(range(records), records)  # the mixture sampler's reads are random too
    wall, cpu = time.perf_counter(), cpu_seconds()
    for start in range(0, records, batch):
        collate([dataset[(0, i, i)] for i in order[start : start + batch]])
    return records / (cpu_seconds() - cpu), records / (time.perf_counter() - wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="a data-engine folder (default: blocks made here)")
    ap.add_argument("--model", type=Path, help=f"folder with config.json + tokenizer (default: the {RECIPE} recipe's)")
    ap.add_argument("--size", type=int, default=384, help="image side of the blocks made here (nano-ocr: 384)")
    ap.add_argument("--n", type=int, default=400, help="samples to time")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=448)
    ap.add_argument("--augment", action="store_true", help="also time with vary.data.augment")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a loader worker

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or make_blocks(Path(tmp) / "blocks", args.n, args.size)
        source = open_source(data)
        if args.model:
            processor = VaryProcessor(VaryConfig.from_pretrained(args.model), load_tokenizer(args.model))
        else:
            processor = recipe_processor(source, Path(tmp) / "tokenizer")
        config = processor.config
        n = min(args.n, len(source))
        print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; {data} ({n} samples), "
              f"{config.image_size} px, max_length {args.max_length}, batch {args.batch}")  # fmt: skip
        variants = {"plain": None}
        if args.augment:
            from vary.data.augment import augment_document

            variants["augmented"] = augment_document
        pad = config.text_config.pad_token_id or 0
        for name, augment in variants.items():
            dataset = VaryTrainDataset([source], processor, args.max_length, augment)
            dataset[(0, 0, 0)]  # noqa: B018 - warm-up: open the shard, fill caches
            per_cpu, per_wall = bench(dataset, n, args.batch, pad)
            print(f"{name:<10} {per_cpu:>7.0f} samples per CPU-second (one worker)   {per_wall:>7.0f} per wall second")


if __name__ == "__main__":
    main()
