"""Training throughput and peak memory on this machine's CPU: the `nano` recipe, `nano-ocr-read` (384 px, one-line
words, vision vocabulary frozen: the bundled model's reading stage) on images and on precomputed vision features
(`vary train features`, `data.vision_features: true`), and full-size `vary-tiny` at batch 1.

    python benchmarks/bench_train.py                       # nano 6, nano-ocr-read 20, vary-tiny 2 steps (~4 min)
    python benchmarks/bench_train.py --skip-tiny --nano-steps 10

Each run is a child process (so its peak RSS is its own) training the shipped recipe on pages the data engine
makes (nano at 512 px, vary-tiny at 1024 px). samples/s leaves out the first step (allocator and thread warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
from vary.train.recipes import load_recipe
from vary.train.trainer import Trainer, read_log
recipe = load_recipe(sys.argv[1], json.loads(sys.argv[2]))
trainer = Trainer(recipe, progress=False)
t0 = time.perf_counter()
trainer.setup()
setup_s = time.perf_counter() - t0
trainer.train()
log = read_log(trainer.out / "log.jsonl")
timed = log[1:] or log
print(json.dumps({
    "setup_s": setup_s,
    "steps": len(log),
    "samples_per_step": log[0]["samples"],
    "step_s": [round(r["step_time"], 2) for r in log],
    "samples_per_s": sum(r["samples"] for r in timed) / sum(r["step_time"] for r in timed),
    "answer_tokens_per_sample": sum(r["tokens"] for r in log) / max(1, sum(r["samples"] for r in log)),
    "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    "parameters_m": sum(p.numel() for p in trainer.model.parameters()) / 1e6,
}))
"""


def make_pages(folder: Path, count: int, size: int) -> Path:
    from vary.data.engine import GenerateConfig, generate

    generate(
        GenerateConfig(kind="pages", out=folder, count=count, size=size, shard_size=count, workers=2, progress=False)
    )
    return folder


def make_words(folder: Path, count: int) -> Path:
    """One-line words at 384 px, as the nano-ocr recipes' words-en."""
    from vary.data.engine import GenerateConfig, generate

    options = {"lines": "1-1", "font": "0.12-0.22"}
    generate(GenerateConfig(kind="blocks", out=folder, count=count, size=384, shard_size=count, workers=2,
                            options=options, progress=False))  # fmt: skip
    return folder


def run(recipe: str, overrides: list[str]) -> dict:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, recipe, json.dumps(overrides)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"{recipe} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    return result


def report(name: str, r: dict) -> None:
    print(
        f"{name:<34} {r['samples_per_s']:8.3f} samples/s  ({r['samples_per_s'] * 3600:8.0f} samples/hour)   "
        f"peak RSS {r['peak_rss_gb']:5.2f} GB   {r['parameters_m']:6.1f}M params   "
        f"{r['samples_per_step']} samples/step, step times {r['step_s']} s, "
        f"{r['answer_tokens_per_sample']:.0f} answer tokens/sample, setup {r['setup_s']:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nano-steps", type=int, default=6)
    parser.add_argument("--read-steps", type=int, default=20)
    parser.add_argument("--tiny-steps", type=int, default=2)
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--skip-nano", action="store_true")
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}, load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_nano:
            data = make_pages(tmp / "pages512", count=64, size=512)
            result = run("nano", [f"data.sources=[{{path: '{data}'}}]", f"train.output_dir={tmp / 'nano'}",
                                  f"train.max_steps={args.nano_steps}", "train.save_every=100000"])  # fmt: skip
            report("nano (512 px, batch 16 = 8 x 2 acc.)", result)
            words = make_words(tmp / "words384", count=400)
            result = run("nano-ocr-read", [f"data.sources=[{{path: '{words}'}}]", "data.eval_sources=[]",
                                           "data.max_length=96", f"train.output_dir={tmp / 'nano-ocr-read'}",
                                           f"train.max_steps={args.read_steps}", "train.save_every=100000"])  # fmt: skip
            report("nano-ocr-read (384 px, frozen vision)", result)
            trained = tmp / "nano-ocr-read" / "model"  # its frozen vision vocabulary is the recipe's own
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "vary", "train", "features", "--model", str(trained), "--data",
                            str(words)], check=True, capture_output=True)  # fmt: skip
            print(f"{'vary train features (384 px)':<34} {400 / (time.perf_counter() - started):8.3f} samples/s "
                  "(one pass over the 400 samples, model load included)")  # fmt: skip
            result = run("nano-ocr-read", [f"data.sources=[{{path: '{words}'}}]", "data.eval_sources=[]",
                                           "data.max_length=96", f"train.output_dir={tmp / 'features'}",
                                           f"init.checkpoint={trained}", "data.vision_features=true",
                                           f"train.max_steps={args.read_steps}", "train.save_every=100000"])  # fmt: skip
            report("nano-ocr-read on vision features", result)
        if not args.skip_tiny:
            data = make_pages(tmp / "pages1024", count=8, size=1024)
            result = run("vary-tiny", [f"data.sources=[{{path: '{data}'}}]", f"train.output_dir={tmp / 'tiny'}",
                                       f"train.max_steps={args.tiny_steps}", "train.batch_size=1",
                                       "train.global_batch_size=1", "train.save_every=100000",
                                       "data.num_workers=0"])  # fmt: skip
            report("vary-tiny full size (batch 1)", result)
    print(f"benchmark RSS of this parent: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")


if __name__ == "__main__":
    main()
