"""Which signal tells a photograph from text for the bundled model's OCR route (issue 33)?

The reading head reads texture in some photographs (windows of a building, a circuit board) as characters, so
"the head read nothing" sends only some photos to the decoder. Per image this prints the head's row readings
(count, confidence) and the decoder's greedy answer to the OCR prompt:

    python research/reader/photo_gate.py src/vary/assets/model data/reader/natural-heldout data/reader/heldout-en ...
"""

from __future__ import annotations

import itertools
import json
import sys

import torch

from vary.data.shards import iter_shards
from vary.eval.metrics import nature_accuracy
from vary.infer.pipeline import Pipeline
from vary.modeling.conv_vocab import greedy_rows


def main(model: str, folders: list[str], limit: int = 48) -> None:
    pipe = Pipeline.from_pretrained(model)
    tok = pipe.processor.tokenizer
    instruction = pipe.prompt_style.instruction("ocr", None, None, False, model=pipe.name)
    for folder in folders:
        for sample in itertools.islice(iter_shards(folder), limit):
            pixels = pipe.processor.image_tensor(sample.image)[None]
            with torch.inference_mode():
                grid = pipe.model.vision_vocab.grid(pixels)
                rows = greedy_rows(pipe.model.reading_logits(grid), tok.pad_token_id, pipe.wide_tokens)[0]
            answer = pipe._generate(pipe._batch([sample.image], instruction, False, None), "ocr", None, None,
                                    pipe.settings)[0].text  # fmt: skip
            print(json.dumps({"set": folder.rsplit("/", 1)[-1], "id": sample.key,
                              "rows": len(rows), "chars": sum(len(r[1]) for r in rows),
                              "conf_max": max((r[2] for r in rows), default=0.0),
                              "conf_mean": sum(r[2] for r in rows) / len(rows) if rows else 0.0,
                              "decoder_nature": nature_accuracy(answer),
                              "nature_nll": float(pipe.nature_nll([sample.image]).min()), "decoder": answer[:60]},
                             ensure_ascii=False), flush=True)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
