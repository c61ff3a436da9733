"""Does a trained model read the image? Answer-token loss on held-out shards with each sample's own image,
with the images of other samples (rolled within the batch) and with blank images.

If the loss with the true images is not clearly below the other two, the model has learnt the language of
the targets (their structure and word statistics) but not yet to read: the plateau the pilot asks about.

    python reports/training/image_ablation.py --model runs/pilot/model --data data/pilot/heldout --samples 64
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import vary
from vary.data.dataset import Collator, VaryTrainDataset, open_source
from vary.train.trainer import answer_tokens, token_loss_sum


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    model, processor = vary.load(args.model)
    model.eval()
    dataset = VaryTrainDataset([open_source(args.data, progress=False)], processor, args.max_length)
    collate = Collator(dataset, pad_token_id=model.config.text_config.pad_token_id or 0)
    totals = {"true images": 0.0, "other samples' images": 0.0, "blank images": 0.0}
    tokens = 0
    for start in range(0, args.samples, args.batch_size):
        batch = collate([dataset[(0, i, i)] for i in range(start, min(start + args.batch_size, args.samples))])
        batch.pop("stats")
        labels, pixels = batch.pop("labels"), batch.pop("pixel_values")
        tokens += answer_tokens(labels)
        for name, images in zip(totals, (pixels, pixels.roll(1, 0), torch.zeros_like(pixels)), strict=True):
            logits = model(**batch, pixel_values=images, use_cache=False).logits
            totals[name] += float(token_loss_sum(logits, labels))
    result = {name: round(total / tokens, 4) for name, total in totals.items()} | {"answer_tokens": tokens}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
