"""Make the reading head's never-trained rows trainable in a model folder (cycle 3 of reports/training/reader).

Rows added to the head while the vocabulary grew used to start at a bias of -1e4 (vary.modeling.vary before
NEW_TOKEN_MARGIN). Adam moves a bias by about the learning rate per step, so those characters could never be
learnt and each of their frames cost 1e4 nats. This sets such rows to the bias new rows get now.

    python research/reader/raise_unread_rows.py src/vary/assets/model OUT
"""

from __future__ import annotations

import sys

import torch

from vary.modeling.loading import load
from vary.modeling.vary import NEW_TOKEN_MARGIN


def main(source: str, out: str) -> None:
    model, processor = load(source)
    bias = model.reading_head.bias
    unread = bias < -1e3
    with torch.no_grad():
        bias[unread] = float(bias[~unread].min()) - NEW_TOKEN_MARGIN
    print(f"{int(unread.sum())} of {bias.numel()} head rows raised to {float(bias.detach()[unread].max()):.2f}")
    model.save_pretrained(out)
    processor.tokenizer.save_pretrained(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
