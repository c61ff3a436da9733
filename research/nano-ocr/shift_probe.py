"""Does the vision vocabulary see text the same wherever it is? Move each image by whole token cells and compare.

A model that reads text only where its training text always was (the top-left margin) may owe that to the
encoder (its tokens for a word depend on where the word is) or to the decoder (it attends to fixed tokens).
This probe tells the two apart: each held-out image is moved right and/or down by whole token cells (64 px at
384 px and 6 x 6 tokens; paper colour filled in) and, for every token cell that holds ink, prints the mean
cosine similarity of its image token (what the decoder sees, after the projector) with the token at the moved
place, with the token left at the old place, and with another image's token at the same place. An encoder
that follows the text gives ~1 for the first and far less for the other two.

    python research/nano-ocr/shift_probe.py --model runs/words-more3/model --data data/heldout/words-en
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from PIL import Image

from vary.data.shards import iter_shards
from vary.modeling.loading import load_model
from vary.modeling.processor import normalize


def moved(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """(H, W) grey image moved dx right and dy down; the uncovered part is the paper's (median) grey."""
    out = np.full_like(image, int(np.median(image)))
    h, w = image.shape
    out[dy:, dx:] = image[: h - dy, : w - dx]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="held-out shards whose text is at the top-left margin")
    parser.add_argument("--samples", type=int, default=48)
    args = parser.parse_args()

    model = load_model(args.model).eval()
    config = model.config
    grid = math.isqrt(config.image_token_len)
    cell = config.image_size // grid
    images = [np.asarray(s.image.convert("L").resize((config.image_size,) * 2)) for s in iter_shards(args.data)]
    images = images[: args.samples]
    if not images:
        raise SystemExit(f"no samples in {args.data}")
    # Which token cells hold ink: (N, grid, grid)
    ink = np.stack([(a < np.median(a) - 60).reshape(grid, cell, grid, cell).any(axis=(1, 3)) for a in images])

    @torch.no_grad()
    def tokens(arrays: list[np.ndarray]) -> torch.Tensor:  # -> (N, grid, grid, H)
        x = torch.stack(
            [normalize(Image.fromarray(a).convert("RGB"), config.image_mean, config.image_std) for a in arrays]
        )
        return model.encode_images(x).reshape(len(arrays), grid, grid, -1)

    before = tokens(images)
    other = before.roll(1, dims=0)  # the next image's tokens, place by place
    for dr, dc in [(0, 1), (1, 0), (0, 2), (2, 2)]:
        after = tokens([moved(a, dc * cell, dr * cell) for a in images])
        keep = torch.from_numpy(ink[:, : grid - dr, : grid - dc])  # ink cells that stay inside the image
        src = before[:, : grid - dr, : grid - dc][keep]
        cos = {
            "the moved token": torch.cosine_similarity(src, after[:, dr:, dc:][keep], dim=-1),
            "the token left in place": torch.cosine_similarity(src, after[:, : grid - dr, : grid - dc][keep], dim=-1),
            "another image's token there": torch.cosine_similarity(
                src, other[:, : grid - dr, : grid - dc][keep], dim=-1
            ),
        }
        scores = ", ".join(f"{name} {value.mean():.3f}" for name, value in cos.items())
        print(f"moved {dr} cell(s) down, {dc} right: {int(keep.sum())} ink tokens; cosine with {scores}")


if __name__ == "__main__":
    main()
