"""Batched decoding of full-size GOT-OCR2 (random weights) on a CPU: left-padded batches against unpadded ones.

`vary serve` batches requests whose prompts differ in length (other tasks, questions), left-padded into one
batch, and `Pipeline` pads likewise. This prints decoding steps/s and tokens/s (all rows) for batch 1, an
unpadded batch and a left-padded batch, with the fast CPU path (`enable_fast_cpu_path`, as `Pipeline` runs)
and without it (transformers' forward), float32 and int8. Decoding only: text prompts of --prompt tokens stand
in for a page's image tokens (decoding reads the cache, not the image).

    python benchmarks/bench_batched_decoding.py                      # ~4 minutes on 2 cores
    python benchmarks/bench_batched_decoding.py --configs int8 --batch 8
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from vary.config import preset
from vary.modeling.loading import load_model
from vary.modeling.vary import VaryForCausalLM


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def batch_prompts(batch: int, length: int, padded: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` random prompts of `length` tokens; padded: row r loses its first 8 * r tokens to left padding."""
    ids = torch.randint(100, 1000, (batch, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    if padded:
        for row in range(batch):
            mask[row, : 8 * row] = 0
    return ids.masked_fill(mask == 0, 0), mask


def steps_per_second(model, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int) -> float:
    """Decoding steps/s over tokens 2..new_tokens: (time of new_tokens + 1) - (time of 2), prefill cancelled."""

    def run(n: int) -> float:
        start = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       eos_token_id=None, pad_token_id=0)  # fmt: skip
        return time.perf_counter() - start

    with torch.inference_mode():
        run(2)  # warm-up: the scripted decoding step is built at the first decode
        return (new_tokens - 1) / (run(new_tokens + 1) - run(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="fp32,int8", help="comma-separated: fp32, int8")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=280, help="prompt tokens (a page: 256 image tokens + text)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {cpu_name()}, {args.threads} threads; torch {torch.__version__}")
    print(f"GOT-OCR2 full size, random weights; prompt {args.prompt} tokens, {args.new_tokens} new tokens a row")
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        VaryForCausalLM(preset("got-ocr2")).to(torch.bfloat16).save_pretrained(folder)  # as the releases: 16-bit
        print(f"\n{'config':8} {'path':6} {'batch':>12} {'steps/s':>9} {'tokens/s':>9}")
        for config in args.configs.split(","):
            model = load_model(folder, quantize="int8" if config == "int8" else None).eval()
            for fast in (True, False):
                model.enable_fast_cpu_path(fast)
                for label, batch, padded in (("1", 1, False), (f"{args.batch}", args.batch, False),
                                             (f"{args.batch} padded", args.batch, True)):  # fmt: skip
                    ids, mask = batch_prompts(batch, args.prompt, padded)
                    rate = steps_per_second(model, ids, mask, args.new_tokens)
                    path = "fast" if fast else "plain"
                    print(f"{config:8} {path:6} {label:>12} {rate:9.1f} {rate * batch:9.1f}", flush=True)
            del model


if __name__ == "__main__":
    main()
