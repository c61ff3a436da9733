"""Does a trained model read the image? Answer-token loss on held-out shards with each sample's own image,
with the next sample's image (vary.train.losses) and with blank images.

If the loss with the true images is not clearly below the other two, the model has learnt the language of
the targets (their structure and word statistics) but not yet to read: the plateau the pilot asks about.

    python research/image_ablation.py --model runs/pilot/model --data data/pilot/heldout --samples 64
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import vary
from vary.data.dataset import VaryTrainDataset, open_source
from vary.train.losses import OWN_AND_OTHER, heldout_losses


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
    variants = OWN_AND_OTHER | {"loss_blank_images": lambda own, other: torch.zeros_like(own)}
    losses = heldout_losses(model, dataset, args.samples, args.batch_size, variants)
    print(json.dumps({name: round(value, 4) for name, value in losses.items()}, indent=1))


if __name__ == "__main__":
    main()
