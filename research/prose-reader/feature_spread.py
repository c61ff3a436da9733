"""Has a run's vision vocabulary collapsed? The across-image spread of its image features, next to a fresh init.

Spread = across-image std of each token over its overall std (vary.train.vision_warmup.spread): ~0 means every
image gives the same tokens, so no decoder can read them. Printed after the ViT neck, after the downsample
conv(s) and after the projector (+ LayerNorm), for a checkpoint folder and for the same shape at random init.

    python research/prose-reader/feature_spread.py runs/prose-reader/checkpoint-0000200 data/prose/heldout-en
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from vary.data.dataset import Collator, VaryTrainDataset, open_source
from vary.modeling.processor import VaryProcessor
from vary.modeling.tokenizer import load_tokenizer
from vary.modeling.vary import VaryForCausalLM
from vary.train.vision_warmup import spread


@torch.no_grad()
def spreads(model: VaryForCausalLM, pixels: torch.Tensor) -> dict[str, float]:
    vocab = model.vision_vocab
    neck = vocab.encoder(pixels).last_hidden_state
    tokens = vocab.net_3(vocab.net_2(neck)).flatten(2).transpose(1, 2)
    return {"neck": spread(neck.flatten(2).transpose(1, 2)), "convs": spread(tokens),
            "projected": spread(model.encode_images(pixels))}  # fmt: skip


def main(folder: Path, data: str, count: int = 16) -> None:
    torch.set_num_threads(1)
    model_dir = folder / "model" if (folder / "model").is_dir() else folder
    trained = VaryForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = load_tokenizer(model_dir)
    dataset = VaryTrainDataset([open_source(data, progress=False)], VaryProcessor(trained.config, tokenizer), 512)
    batch = Collator(dataset, tokenizer.pad_token_id)([dataset[(0, i, i)] for i in range(count)])
    torch.manual_seed(0)
    fresh = VaryForCausalLM(trained.config).eval()
    for name, model in (("random init", fresh), (str(folder), trained)):
        print(name, {k: round(v, 4) for k, v in spreads(model, batch["pixel_values"]).items()})


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
