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

A third objective says where each character is (`--cell-weight 1`, data made with `--option boxes=true`):
each token must name the characters whose glyph centres fall in its own cell, from the glyph boxes the
blocks source records: a softmax over the characters and "none" per cell (a per-cell binary loss drowned in
its negatives and learnt nothing in 500 steps). It needs a character tokenizer (one token per character).

The result is a whole Vary model folder (decoder still random) for `vary train run ... init.vary_tiny=OUT`
(vision vocabulary only) or `init.checkpoint=OUT` (also the projector and tokenizer).

    python reports/training/nano-ocr/vision_warmup.py --data data/nano-ocr/words-en \
        --heldout data/heldout/words-en --out runs/vision-warmup --steps 600 --lr 3e-4 --pixel-weight 1 \
        [--cell-weight 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import models
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import vary
from vary.data.dataset import MixtureSampler, open_source
from vary.modeling.processor import VaryProcessor
from vary.modeling.tokenizer import load_tokenizer, train_char_tokenizer


def nano_model(vocab_size: int) -> vary.VaryForCausalLM:
    """A fresh model of the nano-ocr recipes' shape: 384 px, 36 image tokens, projector LayerNorm."""
    config = vary.preset("nano", vision_config={"image_size": 384}, image_token_len=36, projector_norm=True,
                         text_config={"vocab_size": vocab_size})  # fmt: skip
    return vary.VaryForCausalLM(config)


def character_set(token_ids: list[int], vocab_size: int, ignore: list[int]) -> torch.Tensor:
    """The answer's token ids -> (V,) multi-hot of the tokens it uses (specials and <unk> dropped)."""
    targets = torch.zeros(vocab_size)
    targets[token_ids] = 1.0
    targets[ignore] = 0.0
    return targets


def cell_characters(char_ids: torch.Tensor, boxes: torch.Tensor, side: int, grid: int, vocab_size: int,
                    ignore: list[int]) -> torch.Tensor:  # fmt: skip
    """(N,) character ids + (N, 4) glyph boxes on a side x side image -> (grid*grid, V): each token cell's
    characters (glyph centre inside the cell), cells in row-major order as VisionVocabulary emits its tokens."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 * grid / side  # (N, 2) as (x, y) in cells
    col, row = centres.long().clamp(0, grid - 1).unbind(1)
    targets = torch.zeros(grid * grid, vocab_size)
    targets[row * grid + col, char_ids] = 1.0
    targets[:, ignore] = 0.0
    return targets


class CharacterHead(nn.Module):
    """Projected image tokens (B, T, H) -> per-token character logits (B, T, V); the image's are their max."""

    def __init__(self, hidden: int, vocab_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden, vocab_size)
        # Zero weights: a random head's first, large gradients drive the from-scratch encoder to image-independent
        # output within ~10 steps (README.md, "vision warm-up"); most characters are absent from any one image.
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, -4.0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(tokens)


class WarmupImages(Dataset):
    """(source, record, position) refs -> the image, its answer's character set and, with `cells`, each
    token cell's characters from the record's glyph boxes (meta["char_boxes"], blocks' boxes=true)."""

    def __init__(self, sources: list, processor: VaryProcessor, grid: int, cells: bool):
        self.sources, self.processor, self.grid, self.cells = sources, processor, grid, cells
        tokenizer = processor.tokenizer
        self.vocab_size = len(tokenizer)
        specials = (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id)
        self.ignore = sorted({i for i in specials if i is not None})
        if cells and not isinstance(tokenizer.backend_tokenizer.model, models.WordLevel):
            raise SystemExit("--cell-weight needs a character tokenizer (one token per character)")

    def __getitem__(self, ref: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        source, record, _ = ref
        conv = self.sources[source].conversation(record)
        answer = conv.turns[-1][1]
        tokenizer = self.processor.tokenizer
        ids = tokenizer(answer.replace("\n", " "), add_special_tokens=False).input_ids  # a line break is no glyph
        item = {"pixel_values": self.processor.image_tensor(conv.image),
                "characters": character_set(ids, self.vocab_size, self.ignore)}  # fmt: skip
        if self.cells:
            if "char_boxes" not in conv.meta:
                raise SystemExit(f"{conv.key} has no char_boxes: generate the data with --option boxes=true")
            chars = answer.replace("\n", "")
            char_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(chars)), dtype=torch.long)
            boxes = torch.tensor(conv.meta["char_boxes"], dtype=torch.float).reshape(-1, 4)
            item["cells"] = cell_characters(char_ids, boxes, conv.image.width, self.grid, self.vocab_size,
                                            self.ignore)  # fmt: skip
        return item


def cell_cross_entropy(logits: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """(B, T, V + 1) logits, the last one "no character"; (B, T, V) multi-hot -> soft-target cross-entropy per
    cell (the cell's characters share the probability mass), averaged over cells."""
    target = torch.cat([cells, (cells.sum(-1, keepdim=True) == 0).float()], dim=-1)
    target = target / target.sum(-1, keepdim=True)
    return -(target * logits.float().log_softmax(-1)).sum(-1).mean()


def cell_accuracy(logits: torch.Tensor, cells: torch.Tensor) -> tuple[float, float]:
    """Of the cells holding characters: the share whose top class is one of them; of the empty cells: the share
    called empty."""
    top = logits.argmax(-1)  # (B, T)
    full = cells.sum(-1) > 0
    hit = cells.gather(-1, top.clamp(max=cells.shape[-1] - 1)[..., None])[..., 0] > 0
    hit &= top < cells.shape[-1]
    empty_ok = top == cells.shape[-1]
    return hit[full].float().mean().item(), empty_ok[~full].float().mean().item()


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
    parser.add_argument(
        "--cell-weight",
        type=float,
        default=0.0,
        help="also name each token cell's own characters (needs glyph boxes: --option boxes=true)",
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
    cell_head = nn.Linear(config.projector_out_dim, len(tokenizer) + 1).to(device)  # + "no character"
    nn.init.zeros_(cell_head.weight)
    cells = args.cell_weight > 0

    dataset = WarmupImages(sources, processor, grid, cells)
    sampler = MixtureSampler([len(s) for s in sources], [1.0] * len(sources), args.seed, args.batch_size,
                             max_steps=args.steps)  # fmt: skip
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=args.workers)
    heldout = WarmupImages([open_source(args.heldout, progress=False)], processor, grid, cells)
    held = torch.utils.data.default_collate([heldout[(0, i, i)] for i in range(min(64, len(heldout.sources[0])))])
    held = {k: v.to(device) for k, v in held.items()}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    params = [*model.vision_vocab.parameters(), *model.projector_vary.parameters(), *model.projector_norm.parameters(),
              *head.parameters(), *pixel_head.parameters(), *cell_head.parameters()]  # fmt: skip
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50))

    def pixel_loss(tokens: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        target = ink_cells(pixels, config.image_mean, config.image_std, grid, cell)
        with autocast:
            drawn = pixel_head(tokens).float()
        return F.mse_loss(drawn, target) / target.var().clamp_min(1e-6)  # 1.0 = predicting the mean

    bar = tqdm(loader, total=args.steps, desc="vision warm-up", unit="step")
    for step, batch in enumerate(bar, start=1):
        batch = {k: v.to(device) for k, v in batch.items()}
        pixels = batch["pixel_values"]
        with autocast:
            tokens = model.encode_images(pixels)
            token_logits = head(tokens).float()  # (B, 36, V)
        loss = F.binary_cross_entropy_with_logits(token_logits.amax(1), batch["characters"])
        if args.pixel_weight:
            loss = loss + args.pixel_weight * pixel_loss(tokens, pixels)
        if cells:
            with autocast:
                cell_logits = cell_head(tokens)
            loss = loss + args.cell_weight * cell_cross_entropy(cell_logits, batch["cells"])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % args.eval_every == 0 or step == args.steps:
            with torch.no_grad(), autocast:
                tokens = torch.cat([model.encode_images(p) for p in held["pixel_values"].split(16)]).float()
                token_logits = head(tokens).float()
                cell_logits = cell_head(tokens).float()
                recon = pixel_loss(tokens[:16], held["pixel_values"][:16]).item()
            logits, targets = token_logits.amax(1), held["characters"]
            # The head scores each image on its own, so the next image's logits are these, rolled.
            own, other = scores(logits, targets), scores(logits.roll(1, 0), targets)
            where = ""
            if cells:
                full, empty = cell_accuracy(cell_logits, held["cells"])
                where = f", cells read right {full:.3f} (empty ones {empty:.3f})"
            tqdm.write(
                f"step {step}: held-out loss {F.binary_cross_entropy_with_logits(logits, targets):.4f}, "
                f"precision/recall {own[0]:.3f}/{own[1]:.3f} (another image's: {other[0]:.3f}/{other[1]:.3f}), "
                f"across-image std of the tokens {spread(tokens[:16]):.3f}, pixel loss {recon:.3f}{where}"
            )
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
