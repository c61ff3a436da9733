"""Warm up a from-scratch vision vocabulary with a direct objective before the decoder sees it.

Trained only through the decoder's loss, a from-scratch nano encoder collapses to image-independent output
(see README.md). Here the encoder, the projector and a throw-away linear head learn "which characters are in
this image" instead: each of the 36 image tokens scores every character, the image's score is the max over
its tokens (so a token learns the glyphs in its own 64x64 cell), and the loss is binary cross-entropy against
the set of characters in the answer. No glyph boxes are needed, only the targets the shards already hold.

A second, denser objective makes the difference (`--pixel-weight 1`): each token also redraws its own 64x64
cell (as 16x16 ink), MAE-style, so the encoder must keep the glyphs (SAM's own encoder is MAE-pretrained).
Both heads start at zero: a random head's first large gradients make the encoder throw the image away
(collapse_probe.py).

The result is a whole Vary model folder (decoder still random) for `vary train run ... init.vary_tiny=OUT`
(vision vocabulary only) or `init.checkpoint=OUT` (also the projector and tokenizer).

    python reports/training/nano-ocr/vision_warmup.py --data data/nano-ocr/words-en \
        --heldout data/heldout/words-en --out runs/vision-warmup --steps 600 --lr 3e-4 --pixel-weight 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

import vary
from vary.data.dataset import Collator, MixtureSampler, VaryTrainDataset, open_source
from vary.modeling.processor import VaryProcessor
from vary.modeling.tokenizer import load_tokenizer, train_char_tokenizer


def nano_model(vocab_size: int) -> vary.VaryForCausalLM:
    """A fresh model of the nano-ocr recipes' shape: 384 px, 36 image tokens, projector LayerNorm."""
    config = vary.preset("nano", vision_config={"image_size": 384}, image_token_len=36, projector_norm=True,
                         text_config={"vocab_size": vocab_size})  # fmt: skip
    return vary.VaryForCausalLM(config)


def character_sets(labels: torch.Tensor, vocab_size: int, ignore: list[int]) -> torch.Tensor:
    """(B, L) labels with -100 off the answer -> (B, V) multi-hot of the answer's tokens (specials dropped)."""
    targets = torch.zeros(labels.shape[0], vocab_size + 1, device=labels.device)
    ids = labels.masked_fill(labels < 0, vocab_size)  # -100 -> a spare column, dropped below
    targets.scatter_(1, ids, 1.0)
    targets = targets[:, :vocab_size]
    targets[:, ignore] = 0.0
    return targets


class CharacterHead(nn.Module):
    """Projected image tokens (B, T, H) -> per-token character logits (B, T, V) -> max over tokens (B, V)."""

    def __init__(self, hidden: int, vocab_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden, vocab_size)
        # Zero weights: a random head's first, large gradients drive the from-scratch encoder to image-independent
        # output within ~10 steps (README.md, "vision warm-up"); most characters are absent from any one image.
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, -4.0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(tokens).amax(dim=1)


def ink_cells(pixels: torch.Tensor, mean: list[float], std: list[float], grid: int, cell: int) -> torch.Tensor:
    """(B, 3, S, S) normalised pixels -> (B, grid*grid, cell*cell) ink (1 - grey) per token cell, raster order."""
    std_, mean_ = (torch.tensor(v, device=pixels.device)[:, None, None] for v in (std, mean))
    grey = (pixels.float() * std_ + mean_).mean(1, keepdim=True)
    small = F.adaptive_avg_pool2d(1.0 - grey, grid * cell)  # (B, 1, grid*cell, grid*cell)
    cells = F.unfold(small, kernel_size=cell, stride=cell)  # (B, cell*cell, grid*grid), row-major cells
    return cells.transpose(1, 2)


def spread(tokens: torch.Tensor) -> float:
    """Across-image std (dim 0) relative to the overall std: ~0 means every image gives the same tokens."""
    return (tokens.std(0).mean() / tokens.std()).item()


def scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Precision and recall of the characters predicted present (logit > 0)."""
    predicted = logits > 0
    hits = (predicted & (targets > 0)).sum().item()
    return hits / max(1, predicted.sum().item()), hits / max(1, (targets > 0).sum().item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", required=True, help="shard folder (repeatable, equal weights)")
    parser.add_argument("--heldout", required=True)
    parser.add_argument("--tokenizer", help="tokenizer folder; default: a character tokenizer of the data's texts")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="bf16 autocast on cuda, fp32 on cpu")  # fmt: skip
    parser.add_argument(
        "--pixel-weight",
        type=float,
        default=0.0,
        help="also reconstruct each token's 64x64 cell (as 16x16 ink) from it, MAE-style",
    )
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    sources = [open_source(path, progress=False) for path in args.data]
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    else:  # what the nano-ocr recipes train (model.tokenizer_type: chars, data.tokenizer_corpus: 20000)
        tokenizer = train_char_tokenizer((t for s in sources for t in s.texts(20000) if t), vocab_size=1536)
    device = torch.device(args.device)
    model = nano_model(len(tokenizer)).to(device)
    config = model.config
    processor = VaryProcessor(config, tokenizer)
    head = CharacterHead(config.projector_out_dim, len(tokenizer)).to(device)
    grid, cell = 6, 16  # 36 tokens, each reconstructs its 64x64 px cell at 16x16
    pixel_head = nn.Linear(config.projector_out_dim, cell * cell)
    nn.init.zeros_(pixel_head.weight)  # as CharacterHead
    pixel_head.to(device)
    ignore = [i for i in {tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id} if i is not None]

    dataset = VaryTrainDataset(sources, processor, max_length=352)
    sampler = MixtureSampler([len(s) for s in sources], [1.0] * len(sources), args.seed, args.batch_size,
                             max_steps=args.steps)  # fmt: skip
    collate = Collator(dataset, tokenizer.pad_token_id)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=args.workers)
    heldout = VaryTrainDataset([open_source(args.heldout, progress=False)], processor, max_length=352)
    held = collate([heldout[(0, i, i)] for i in range(min(64, len(heldout.sources[0])))])
    held = {k: held[k].to(device) for k in ("labels", "pixel_values")}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    params = [*model.vision_vocab.parameters(), *model.projector_vary.parameters(),
              *model.projector_norm.parameters(), *head.parameters(), *pixel_head.parameters()]  # fmt: skip
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50))

    def pixel_loss(tokens: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        target = ink_cells(pixels, config.image_mean, config.image_std, grid, cell)
        with autocast:
            drawn = pixel_head(tokens).float()
        return F.mse_loss(drawn, target) / target.var().clamp_min(1e-6)  # 1.0 = predicting the mean

    bar = tqdm(loader, total=args.steps, desc="vision warm-up", unit="step")
    for step, batch in enumerate(bar, start=1):
        labels, pixels = batch["labels"].to(device), batch["pixel_values"].to(device)
        targets = character_sets(labels, len(tokenizer), ignore)
        with autocast:
            tokens = model.encode_images(pixels)
            logits = head(tokens).float()
        loss = F.binary_cross_entropy_with_logits(logits, targets)
        if args.pixel_weight:
            loss = loss + args.pixel_weight * pixel_loss(tokens, pixels)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % args.eval_every == 0 or step == args.steps:
            with torch.no_grad(), autocast:
                tokens = torch.cat([model.encode_images(p) for p in held["pixel_values"].split(16)]).float()
                logits = head(tokens).float()
                recon = pixel_loss(tokens[:16], held["pixel_values"][:16]).item()
            targets = character_sets(held["labels"], len(tokenizer), ignore)
            # The head scores each image on its own, so the next image's logits are these, rolled.
            own, other = scores(logits, targets), scores(logits.roll(1, 0), targets)
            tqdm.write(
                f"step {step}: held-out loss {F.binary_cross_entropy_with_logits(logits, targets):.4f}, "
                f"precision/recall {own[0]:.3f}/{own[1]:.3f} (another image's: {other[0]:.3f}/{other[1]:.3f}), "
                f"across-image std of the tokens {spread(tokens[:16]):.3f}, pixel loss {recon:.3f}"
            )
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
