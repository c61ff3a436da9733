"""Where and when does a from-scratch vision vocabulary lose the image? Reconstruct one fixed batch from it.

A fresh nano encoder (384 px, 36 tokens) and a linear head learn to redraw each token's 64x64 cell (as 16x16
ink) for 16 fixed images. Every 10 steps it prints the reconstruction loss (mean squared error over the
targets' variance: 1.0 is one grey level everywhere) and the across-image std of the tokens relative to their
overall std ("spread": ~0 means every image gives the same tokens); at the end, the spread after every stage.

    python research/nano-ocr/collapse_probe.py --data data/heldout/words-en --tokenizer runs/words-joint/tokenizer
    ... --random-head      # the head starts random instead of at zero
    ... --freeze-vision    # only the projector and head learn
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from vary.data.dataset import Collator, VaryTrainDataset, open_source
from vary.modeling.processor import VaryProcessor
from vary.modeling.tokenizer import load_tokenizer
from vary.train.vision_warmup import ink_cells, nano_model, spread


def stage_spreads(model: nn.Module, pixels: torch.Tensor) -> dict[str, float]:
    """The spread after the patch embedding, each ViT block, the neck's parts, net_2/net_3 and the projector."""
    encoder, vocab = model.vision_vocab.encoder, model.vision_vocab
    stages = {"patch_embed": encoder.patch_embed, **{f"block {i}": b for i, b in enumerate(encoder.layers)},
              "neck conv1": encoder.neck.conv1, "neck norm1": encoder.neck.layer_norm1,
              "neck conv2": encoder.neck.conv2, "neck": encoder.neck, "net_2": vocab.net_2, "net_3": vocab.net_3,
              "projector": model.projector_vary, "projector norm": model.projector_norm}  # fmt: skip
    out: dict[str, float] = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:  # returns None: the output goes on unchanged
            out[name] = spread(output[0] if isinstance(output, tuple) else output)

        return hook

    hooks = [module.register_forward_hook(record(name)) for name, module in stages.items()]
    with torch.no_grad():
        model.encode_images(pixels)
    for hook in hooks:
        hook.remove()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--random-head", action="store_true")
    parser.add_argument("--freeze-vision", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.tokenizer)
    model = nano_model(len(tokenizer))
    config = model.config
    dataset = VaryTrainDataset([open_source(args.data, progress=False)], VaryProcessor(config, tokenizer), 352)
    pixels = Collator(dataset, tokenizer.pad_token_id)([dataset[(0, i, i)] for i in range(16)])["pixel_values"]
    target = ink_cells(pixels, config.image_mean, config.image_std, grid=6, cell=16)
    head = nn.Linear(config.projector_out_dim, target.shape[-1])
    if not args.random_head:
        nn.init.zeros_(head.weight)
    model.vision_vocab.requires_grad_(not args.freeze_vision)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    print(f"step 0: spread {spread(model.encode_images(pixels).detach()):.3f}")
    for step in range(1, args.steps + 1):
        tokens = model.encode_images(pixels)
        loss = F.mse_loss(head(tokens), target) / target.var()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            print(f"step {step}: reconstruction {loss.item():.3f}, spread {spread(tokens.detach()):.3f}", flush=True)
    print("spread per stage:", {k: round(v, 3) for k, v in stage_spreads(model, pixels).items()})


if __name__ == "__main__":
    main()
