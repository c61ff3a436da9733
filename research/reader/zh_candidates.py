"""How often the head's own runner-up candidates hold the right character where it misreads a Chinese glyph: the
ceiling of re-ranking its readings with a language model (not built yet). Dev set only.

    python research/reader/zh_candidates.py src/vary/assets/model data/reader/dev-zh --limit 32

Each grid row's reading (conv_vocab.greedy_rows, as shipped) is aligned with the reference line it matches best
(rapidfuzz ratio >= 60); at every substitution of one CJK character for another, the candidates are the glyph's
run of frames summed (as the decoding ranks them) and the right character's rank among them is counted.
"""

from __future__ import annotations

import argparse
import itertools

import torch
from rapidfuzz import fuzz, process
from rapidfuzz.distance import Levenshtein

from vary.data.shards import iter_shards
from vary.infer.pipeline import Pipeline
from vary.modeling.conv_vocab import greedy_rows, wide_glyph


def main(model: str, data: str, limit: int, top: int = 5) -> None:
    pipe = Pipeline.from_pretrained(model)
    blank = pipe.model.config.text_config.pad_token_id
    char = {i: t for t, i in pipe.processor.tokenizer.get_vocab().items()}
    subs, found = 0, [0] * top
    for sample in itertools.islice(iter_shards(data), limit):
        with torch.inference_mode():
            probs = pipe.model.frame_logits(pipe.processor.image_tensor(sample.image)[None]).float().softmax(-1)
        rows = greedy_rows(probs, blank, pipe.wide_tokens, pipe.model.config.lookalike_nats, probs=probs)[0]
        for r, ids, _, frames in rows:
            text = "".join(char.get(i, "?") for i in ids)
            match = process.extractOne(text, sample.target.split("\n"), scorer=fuzz.ratio)
            if len(text) < 4 or match is None or match[1] < 60:
                continue
            best = probs[0, r].argmax(-1)
            for op in Levenshtein.editops(text, match[0]):
                if op.tag != "replace":
                    continue
                read, truth = text[op.src_pos], match[0][op.dest_pos]
                if not (wide_glyph(read) and wide_glyph(truth)):
                    continue
                end = frames[op.src_pos] + 1
                while end < best.shape[0] and int(best[end]) != blank:
                    end += 1
                ranked = [
                    char.get(i, "?") for i in probs[0, r, frames[op.src_pos] : end].sum(0).topk(top).indices.tolist()
                ]
                subs += 1
                if truth in ranked:
                    found[ranked.index(truth)] += 1
    cumulative = list(itertools.accumulate(found))
    print(f"{subs} CJK substitutions; the right character among the top k: "
          + ", ".join(f"k={k + 1} {n} ({n / max(subs, 1):.0%})" for k, n in enumerate(cumulative)))  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--limit", type=int, default=32)
    args = parser.parse_args()
    main(args.model, args.data, args.limit)
