"""The answer-token loss: what training minimises (`token_loss_sum`), and the held-out check of whether the
model reads the image or only the language of its targets (`heldout_losses`).

The held-out check is that loss on held-out samples with each sample's own image, and with the next sample's
image in its place. A model that reads shows a clear gap between the two. A model that has only learnt the targets'
language, or whose vision encoder collapsed to an image-independent output, shows none: its training loss
still falls, so the training loss alone cannot tell the two apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vary.data.dataset import IGNORE_INDEX, Collator, VaryTrainDataset

# name -> (own images, the next sample's images) -> the images the model sees
ImageVariant = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OWN_AND_OTHER: dict[str, ImageVariant] = {"loss": lambda own, other: own, "loss_other_images": lambda own, other: other}
IMAGE_KEYS = ("pixel_values", "pixel_values_clip")  # Vary-base batches carry both


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropies over positions whose label is not -100."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def answer_tokens(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def _batches(count: int, batch_size: int) -> list[range]:
    """Consecutive index ranges; never a last batch of one (its "other" image would be its own)."""
    starts = list(range(0, count, batch_size))
    if len(starts) > 1 and count - starts[-1] == 1:
        starts.pop()
    return [range(a, b) for a, b in zip(starts, [*starts[1:], count], strict=True)]


@torch.no_grad()
def heldout_losses(model: torch.nn.Module, dataset: VaryTrainDataset, count: int, batch_size: int,
                   variants: dict[str, ImageVariant] = OWN_AND_OTHER, device: torch.device | str = "cpu",
                   autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                   ) -> dict[str, float]:  # fmt: skip
    """Mean answer-token loss (nats per token) of the first `count` samples of source 0 of `dataset`, once per
    image variant. Within each batch, sample i's "other" image is sample i+1's (the last takes the first's)."""
    count = min(count, len(dataset.sources[0]))
    collate = Collator(dataset, pad_token_id=model.config.text_config.pad_token_id or 0)
    totals, tokens = dict.fromkeys(variants, 0.0), 0
    for indices in _batches(count, max(batch_size, 2)):
        batch = collate([dataset[(0, i, i)] for i in indices])
        batch.pop("stats")
        labels = batch.pop("labels").to(device)
        images = {k: batch.pop(k) for k in IMAGE_KEYS if k in batch}
        inputs = {k: v.to(device) for k, v in batch.items()}
        tokens += answer_tokens(labels)
        for name, variant in variants.items():
            seen = {k: variant(v, v.roll(-1, 0)).to(device) for k, v in images.items()}
            with autocast():
                logits = model(**inputs, **seen, use_cache=False).logits
            totals[name] += float(token_loss_sum(logits, labels))
    return {name: total / max(tokens, 1) for name, total in totals.items()}
