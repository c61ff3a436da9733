"""Vision warm-up: train a from-scratch vision vocabulary with direct objectives before the decoder sees it.

Trained only through the decoder's loss, a from-scratch nano encoder collapses to image-independent output
(the same tokens for every image). Here the encoder, the projector and throw-away linear heads learn from the
image itself instead:

* characters (always on): each of the 36 image tokens scores every character, the image's score is the max
  over its tokens (so a token learns the glyphs in its own 64x64 cell), and the loss is binary cross-entropy
  against the set of characters in the answer. No glyph boxes are needed, only the targets the shards hold.
* pixels (`pixel_weight`): each token also redraws its own 64x64 cell as 16x16 ink, MAE-style, so the encoder
  must keep the glyphs (SAM's own encoder is MAE-pretrained). This denser signal is what makes the warm-up work.
* cells (`cell_weight`, data made with `--option boxes=true`): each token names the characters whose glyph
  centres fall in its own cell: a softmax over the characters and "none" per cell (a per-cell binary loss
  drowns in its negatives). Needs a character tokenizer (one token per character).

Every head starts at zero weights: a random head's first large gradients make the encoder throw the image
away within a few steps. The result is a whole Vary model folder (decoder still random) for
`vary train run nano-ocr-read init.vary_tiny=OUT` (vision vocabulary only) or `init.checkpoint=OUT`.

    vary train warmup --data data/nano-ocr/words-en --heldout data/heldout/words-en --out runs/vision-warmup \
        --pixel-weight 1
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import models
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vary.config import preset
from vary.data.dataset import MixtureSampler, open_source
from vary.modeling.processor import VaryProcessor
from vary.modeling.tokenizer import load_tokenizer, train_char_tokenizer
from vary.modeling.vary import VaryForCausalLM

GRID, CELL = 6, 16  # 36 image tokens in a 6 x 6 grid; each redraws its 64x64 px cell at 16x16
VOCAB_SIZE = 1536  # the nano-ocr recipes' text_config.vocab_size
TOKENIZER_CORPUS = 20000  # and their data.tokenizer_corpus


class WarmupError(ValueError):
    """Data or options the warm-up cannot use (one line for the CLI)."""


def nano_model(vocab_size: int) -> VaryForCausalLM:
    """A fresh model of the nano-ocr recipes' shape: 384 px, 36 image tokens, projector LayerNorm."""
    config = preset("nano", vision_config={"image_size": 384}, image_token_len=GRID * GRID, projector_norm=True,
                    text_config={"vocab_size": vocab_size})  # fmt: skip
    return VaryForCausalLM(config)


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


def zero_linear(inputs: int, outputs: int, bias: float | None = None) -> nn.Linear:
    """A linear head with zero weights (input-independent at first): a random head's first large gradients make
    a from-scratch encoder collapse. The bias keeps its default init unless given."""
    linear = nn.Linear(inputs, outputs)
    nn.init.zeros_(linear.weight)
    if bias is not None:
        nn.init.constant_(linear.bias, bias)
    return linear


class CharacterHead(nn.Module):
    """Projected image tokens (B, T, H) -> per-token character logits (B, T, V); the image's are their max."""

    def __init__(self, hidden: int, vocab_size: int):
        super().__init__()
        # Bias -4: most characters are absent from any one image.
        self.linear = zero_linear(hidden, vocab_size, bias=-4.0)

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
            raise WarmupError("the cell objective needs a character tokenizer (one token per character)")

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
                raise WarmupError(f"{conv.key} has no char_boxes: generate the data with --option boxes=true")
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


def precision_recall(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Precision and recall of the characters predicted present (logit > 0)."""
    predicted = logits > 0
    hits = (predicted & (targets > 0)).sum().item()
    return hits / max(1, predicted.sum().item()), hits / max(1, (targets > 0).sum().item())


@dataclass
class WarmupConfig:
    data: list[str]  # shard folders, equal weights
    heldout: str
    out: Path
    tokenizer: str | None = None  # default: a character tokenizer of the data's texts, as the recipes train
    steps: int = 600
    batch_size: int = 16
    lr: float = 1e-3
    eval_every: int = 100
    heldout_samples: int = 64
    seed: int = 0
    workers: int = 1
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")
    pixel_weight: float = 0.0
    cell_weight: float = 0.0


class WarmupHeads(nn.Module):
    """The three throw-away heads over the projected image tokens."""

    def __init__(self, hidden: int, vocab_size: int, cell: int):
        super().__init__()
        self.characters = CharacterHead(hidden, vocab_size)
        self.pixels = zero_linear(hidden, cell * cell)
        self.cells = zero_linear(hidden, vocab_size + 1)  # + "no character"


def warm_up(config: WarmupConfig, progress: bool = True, log: Callable[[str], None] = tqdm.write) -> Path:
    """Train the vision vocabulary and projector of a fresh nano-ocr model; save it (and its tokenizer) to
    `config.out`. Returns the folder. Prints held-out scores every `eval_every` steps through `log`."""
    if config.steps < 1 or config.batch_size < 1:
        raise WarmupError("steps and batch size must be at least 1")
    torch.manual_seed(config.seed)
    sources = [open_source(path, progress=False) for path in config.data]
    if config.tokenizer:
        tokenizer = load_tokenizer(config.tokenizer)
    else:
        texts = (t for s in sources for t in s.texts(TOKENIZER_CORPUS) if t)
        tokenizer = train_char_tokenizer(texts, vocab_size=VOCAB_SIZE)
    device = torch.device(config.device)
    model = nano_model(len(tokenizer)).to(device)
    mc = model.config
    processor = VaryProcessor(mc, tokenizer)
    heads = WarmupHeads(mc.projector_out_dim, len(tokenizer), CELL).to(device)
    cells = config.cell_weight > 0

    dataset = WarmupImages(sources, processor, GRID, cells)
    sampler = MixtureSampler([len(s) for s in sources], [1.0] * len(sources), config.seed, config.batch_size,
                             max_steps=config.steps)  # fmt: skip
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=config.workers)
    heldout = WarmupImages([open_source(config.heldout, progress=False)], processor, GRID, cells)
    count = min(config.heldout_samples, len(heldout.sources[0]))
    held = torch.utils.data.default_collate([heldout[(0, i, i)] for i in range(count)])
    held = {k: v.to(device) for k, v in held.items()}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    params = [*model.vision_vocab.parameters(), *model.projector_vary.parameters(),
              *model.projector_norm.parameters(), *heads.parameters()]  # fmt: skip
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.05, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50))

    def pixel_loss(tokens: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        target = ink_cells(pixels, mc.image_mean, mc.image_std, GRID, CELL)
        with autocast:
            drawn = heads.pixels(tokens).float()
        return F.mse_loss(drawn, target) / target.var().clamp_min(1e-6)  # 1.0 = predicting the mean

    bar = tqdm(loader, total=config.steps, desc="vision warm-up", unit="step", disable=not progress)
    for step, batch in enumerate(bar, start=1):
        batch = {k: v.to(device) for k, v in batch.items()}
        pixels = batch["pixel_values"]
        with autocast:
            tokens = model.encode_images(pixels)
            token_logits = heads.characters(tokens).float()  # (B, 36, V)
        loss = F.binary_cross_entropy_with_logits(token_logits.amax(1), batch["characters"])
        if config.pixel_weight:
            loss = loss + config.pixel_weight * pixel_loss(tokens, pixels)
        if cells:
            with autocast:
                cell_logits = heads.cells(tokens)
            loss = loss + config.cell_weight * cell_cross_entropy(cell_logits, batch["cells"])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % config.eval_every == 0 or step == config.steps:
            log(f"step {step}: " + _heldout_scores(model, heads, held, pixel_loss, autocast, cells))
    model.save_pretrained(config.out)
    tokenizer.save_pretrained(config.out)
    return Path(config.out)


@torch.no_grad()
def _heldout_scores(model, heads: WarmupHeads, held: dict, pixel_loss, autocast, cells: bool) -> str:
    with autocast:
        tokens = torch.cat([model.encode_images(p) for p in held["pixel_values"].split(16)]).float()
        logits = heads.characters(tokens).float().amax(1)
        cell_logits = heads.cells(tokens).float()
        recon = pixel_loss(tokens[:16], held["pixel_values"][:16]).item()
    targets = held["characters"]
    # The head scores each image on its own, so another image's logits are these, rolled by one.
    own, other = precision_recall(logits, targets), precision_recall(logits.roll(1, 0), targets)
    where = ""
    if cells:
        full, empty = cell_accuracy(cell_logits, held["cells"])
        where = f", cells read right {full:.3f} (empty ones {empty:.3f})"
    return (
        f"held-out loss {F.binary_cross_entropy_with_logits(logits, targets):.4f}, "
        f"precision/recall {own[0]:.3f}/{own[1]:.3f} (another image's: {other[0]:.3f}/{other[1]:.3f}), "
        f"across-image std of the tokens {spread(tokens[:16]):.3f}, pixel loss {recon:.3f}{where}"
    )
