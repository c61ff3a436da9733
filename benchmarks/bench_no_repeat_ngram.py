"""Cost of the n-gram ban per decoding step: ours (vary.infer.generation.NoRepeatNGram) vs transformers'.

    python benchmarks/bench_no_repeat_ngram.py                       # CPU, GOT's n=20, vocab 151860
    python benchmarks/bench_no_repeat_ngram.py --device cuda --batch 8

A step sees the whole sequence so far (prompt + generated); the time is per call at several sequence
lengths, i.e. what the ban adds to every generated token of a page that long. Both give the same scores
(tests/test_got_inference.py); this only measures time.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import NoRepeatNGramLogitsProcessor

from vary.infer.generation import NoRepeatNGram


def per_call_ms(processor, ids: torch.Tensor, scores: torch.Tensor, repeats: int) -> float:
    processor(ids, scores.clone())  # warm-up
    if ids.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        processor(ids, scores.clone())
    if ids.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--vocab", type=int, default=151860)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    print(
        f"device {args.device}, batch {args.batch}, n {args.n}, vocab {args.vocab}, torch threads {torch.get_num_threads()}"
    )
    print(f"{'length':>7} {'transformers ms':>16} {'ours ms':>9} {'speed-up':>9}")
    for length in args.lengths:
        # Text-like ids: a small working vocabulary so that n-grams do repeat and bans happen.
        ids = torch.randint(0, 2000, (args.batch, length), generator=generator).to(args.device)
        scores = torch.randn(args.batch, args.vocab, generator=generator).to(args.device)
        theirs = per_call_ms(NoRepeatNGramLogitsProcessor(args.n), ids, scores, args.repeats)
        ours = per_call_ms(NoRepeatNGram(args.n), ids, scores, args.repeats)
        print(f"{length:>7} {theirs:>16.2f} {ours:>9.2f} {theirs / ours:>8.1f}x")


if __name__ == "__main__":
    main()
