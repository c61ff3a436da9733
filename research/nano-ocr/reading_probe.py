"""Can a from-scratch model learn to read even one fixed batch? Overfit N samples, compare with rolled images.

Trains a fresh nano-ocr-shaped model (384 px, 36 image tokens) on the same N samples for --steps steps and
prints the training loss next to the loss with the images rolled within the batch. If the two stay equal,
the model fits the targets without using the images (it memorises continuations and the first-character
distribution). Two controls show the decoder itself can read:
  --cheat all   the image tokens are replaced by a fixed random code of the first answer character;
  --cheat one   the code sits in one image token, zeros elsewhere.

    python research/nano-ocr/reading_probe.py --data data/nano-ocr/chars-en --tokenizer runs/nano-ocr-read/tokenizer
"""

from __future__ import annotations

import argparse

import torch

from vary.data.dataset import Collator, VaryTrainDataset, open_source
from vary.modeling.processor import VaryProcessor
from vary.modeling.tokenizer import load_tokenizer
from vary.train.losses import answer_tokens, token_loss_sum
from vary.train.vision_warmup import nano_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--freeze-vision", action="store_true")
    parser.add_argument("--vision-lr-scale", type=float, default=1.0, help="the vision vocabulary's lr, times --lr")
    parser.add_argument("--cheat", choices=("all", "one"), default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.tokenizer)
    model = nano_model(len(tokenizer)).train()
    config = model.config
    processor = VaryProcessor(config, tokenizer)
    dataset = VaryTrainDataset([open_source(args.data, progress=False)], processor, max_length=352)
    batch = Collator(dataset, tokenizer.pad_token_id)([dataset[(0, i, i)] for i in range(args.samples)])
    ids, mask, labels, pixels = batch["input_ids"], batch["attention_mask"], batch["labels"], batch["pixel_values"]
    first = labels.gather(1, (labels != -100).int().argmax(1, keepdim=True))[:, 0]  # first answer token
    code = torch.randn(len(tokenizer), config.text_config.hidden_size)
    if args.freeze_vision:
        model.vision_vocab.requires_grad_(False)
    vision = {id(p) for p in model.vision_vocab.parameters()}
    groups = [
        {"params": [p for p in model.parameters() if p.requires_grad and id(p) not in vision]},
        {
            "params": [p for p in model.vision_vocab.parameters() if p.requires_grad],
            "lr": args.lr * args.vision_lr_scale,
        },
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr)

    def loss_with(images: torch.Tensor) -> torch.Tensor:
        if args.cheat is None:
            logits = model(input_ids=ids, attention_mask=mask, pixel_values=images).logits
        else:
            feats = torch.zeros(len(ids), config.image_token_len, code.shape[1])
            which = first if images is pixels else first.roll(1, 0)
            if args.cheat == "all":
                feats[:] = code[which][:, None]
            else:
                feats[:, config.image_token_len // 2] = code[which]
            embeds = model.splice_image_features(ids, model.get_input_embeddings()(ids), feats)
            logits = model.language_model(inputs_embeds=embeds, attention_mask=mask).logits
        return token_loss_sum(logits, labels) / answer_tokens(labels)

    for step in range(1, args.steps + 1):
        loss = loss_with(pixels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 20 == 0:
            with torch.no_grad():
                rolled = loss_with(pixels.roll(1, 0))
            print(f"step {step:4d}  loss {loss.item():.3f}  with rolled images {rolled.item():.3f}", flush=True)


if __name__ == "__main__":
    main()
