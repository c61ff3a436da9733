"""The ceiling of the chart layout rules (vary.infer.chart_reading): read each chart of a shard folder with a
perfect head (one-hot logits from its training labels, at the bundled model's 24 x 96 frame grid) and score the
dict. Misses here are the rules' (or the labels'), not the model's.

    python research/reader/chart_ceiling.py data/reader/charts-heldout-en [--show]
"""

from __future__ import annotations

import argparse
import functools

import torch

from vary.data.dataset import Conversation, line_labels_for
from vary.data.shards import iter_shards
from vary.eval.metrics import chart_scores
from vary.infer.chart_reading import read_chart
from vary.modeling.conv_vocab import greedy_rows, wide_tokens
from vary.modeling.tokenizer import load_tokenizer

parser = argparse.ArgumentParser()
parser.add_argument("data")
parser.add_argument("--tokenizer", default="src/vary/assets/model")
parser.add_argument("--show", action="store_true", help="print the charts not read back exactly")
args = parser.parse_args()

tok = load_tokenizer(args.tokenizer)
wide = wide_tokens(tok, len(tok))
decode = functools.partial(tok.decode, skip_special_tokens=True)
totals, n = {}, 0
for record in iter_shards(args.data):
    conv = Conversation(record.key, record.image, [("", record.target)], record.kind, record.meta)
    labels = line_labels_for(conv, tok, 24, 96)
    logits = torch.nn.functional.one_hot(labels, len(tok)).float()[None] * 10
    answer = read_chart(greedy_rows(logits, tok.pad_token_id, wide)[0], decode)
    scores = chart_scores(answer, record.target)
    n += 1
    for key, value in scores.items():
        totals[key] = totals.get(key, 0.0) + value
    if args.show and scores["chart_value_accuracy"] < 1:
        print(answer, "|", record.target)
print(n, {key: round(value / n, 3) for key, value in totals.items()})
