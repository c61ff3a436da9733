"""The word list's settings compared on the dev sets (not the held-out test sets): English chart values and
English prose edit distance, each setting read with the library's decoding (vary.modeling.lexicon).

    python research/reader/lexicon_dev.py src/vary/assets/model --nats 0,4,8,16,1000
    python research/reader/lexicon_dev.py src/vary/assets/model --min-length 4,3 --two-edits-from 99,8,6,5,4
    python research/reader/lexicon_dev.py src/vary/assets/model --charts data/reader/charts-dev-zh \
        --prose data/reader/dev-zh --chinese-weight 0,0.05,0.1,0.2,0.3

Each setting is every combination of the lists given (the others at the library's defaults). 0 nats: no word
list; Chinese weight 0: no re-ranking of CJK glyphs (vary.modeling.char_bigrams). Prints one line per setting.
"""

from __future__ import annotations

import argparse
import itertools
import time

from vary.data.shards import iter_shards
from vary.eval.metrics import chart_scores, score
from vary.infer.pipeline import Pipeline
from vary.modeling.char_bigrams import ChineseReranker
from vary.modeling.lexicon import MIN_LENGTH, TWO_EDITS_FROM


def numbers(text: str, kind=float) -> list:
    return [kind(x) for x in text.split(",")]


def main(model: str, charts: str, prose: str, nats: list[float], min_length: list[int], two_edits_from: list[int],
         chinese_weight: list[float], limit: int) -> None:  # fmt: skip
    pipe = Pipeline.from_pretrained(model)
    reader = pipe.lexicon_reader
    if reader is None:
        raise SystemExit(f"{model}: no lexicon.txt (vary data lexicon) or lexicon_nats 0")
    chart_samples = list(itertools.islice(iter_shards(charts), limit))
    prose_samples = list(itertools.islice(iter_shards(prose), limit))
    chinese = reader.chinese or ChineseReranker(pipe.processor.tokenizer, pipe.model.config.text_config.vocab_size, 0.1)
    for n, length, two, weight in itertools.product(nats, min_length, two_edits_from, chinese_weight):
        start = time.time()
        reader.nats, reader.min_length, reader.two_edits_from = n, length, two
        chinese.weight, reader.chinese = weight, chinese if weight > 0 else None
        pipe.__dict__["lexicon_reader"] = reader if n > 0 else None  # the cached property, set per setting
        values = [
            chart_scores(str(pipe.run(s.image, "chart")), s.target)["chart_value_accuracy"] for s in chart_samples
        ]
        eds = [score("page", str(pipe.ocr(s.image)), s.target)["edit_distance"] for s in prose_samples]
        print(f"nats {n:g}, min length {length}, two edits from {two}, Chinese weight {weight:g}: chart values "
              f"{sum(values) / len(values):.3f},"
              f" prose ED {sum(eds) / len(eds):.4f} ({time.time() - start:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--charts", default="data/reader/charts-dev-en")
    parser.add_argument("--prose", default="data/reader/dev-en")
    parser.add_argument("--nats", default="8")
    parser.add_argument("--min-length", default=str(MIN_LENGTH))
    parser.add_argument("--two-edits-from", default=str(TWO_EDITS_FROM))
    parser.add_argument("--chinese-weight", default="0.1")
    parser.add_argument("--limit", type=int, default=64)
    args = parser.parse_args()
    main(args.model, args.charts, args.prose, numbers(args.nats), numbers(args.min_length, int),
         numbers(args.two_edits_from, int), numbers(args.chinese_weight), args.limit)  # fmt: skip
