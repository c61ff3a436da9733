"""Decoding variants of the reading head, compared on a dev set (not the held-out test sets).

Dev: `vary data generate blocks --count 64 --lang zh --size 512 --seed 2000 --option text=prose
--option split=heldout --option boxes=true` (and en): held-out faces and passages like the test sets, other
samples. The head runs once per image; each variant decodes the same frame probabilities ("library, look-alikes
N": conv_vocab.greedy_rows as shipped, touching look-alikes merged under N nats, config.lookalike_nats; "library,
double letters T": with the model's look-alike nats, a letter run split where the blank peaks at T or more,
lines chosen on the reading without splits, as VaryForCausalLM.read_lines does, config.double_letter_blank):

    python research/reader/decode_dev.py MODEL data/reader/dev-zh data/reader/dev-en --lookalike-nats 0,1,1.5,2
    python research/reader/decode_dev.py MODEL data/reader/dev-en --double-letter-blank 0,0.02,0.05,0.1,0.2
"""

from __future__ import annotations

import argparse
import itertools

import torch
from rapidfuzz.distance import Levenshtein

from vary.data.shards import iter_shards
from vary.infer.pipeline import Pipeline
from vary.modeling.conv_vocab import greedy_rows, letter_tokens, merge_rows, wide_tokens


def rows_of(
    probs: torch.Tensor,
    blank: int,
    min_conf: float = 0.0,
    cjk_runs: bool = False,
    cjk_ids=None,
    min_run_conf: float = 0.0,
):
    """greedy_rows for one image's (R, F, V) probabilities, with the variants' two changes."""
    conf, best = probs.max(-1)
    best = torch.where((best != blank) & (conf < min_conf), torch.full_like(best, blank), best)
    rows = []
    for r in range(best.shape[0]):
        ids, confs, run = [], [], []  # run: the frames since the last blank
        frames = best[r].tolist() + [blank]
        for f, b in enumerate(frames):
            if b == blank:
                if run:
                    if cjk_runs and any(cjk_ids[best[r, g]] for g in run):
                        total = probs[r, run].sum(0)  # the run's summed probabilities: one character
                        c = int(total.argmax())
                        if float(total[c]) / len(run) >= min_run_conf:
                            ids.append(c)
                            confs.append(float(total[c]) / len(run))
                    else:
                        prev = None
                        for g in run:
                            if best[r, g] != prev:
                                ids.append(int(best[r, g]))
                                confs.append(float(conf[r, g]))
                            prev = best[r, g]
                run = []
            else:
                run.append(f)
        if ids:
            rows.append((r, ids, sum(confs) / len(confs)))
    return rows


def merge_variant(rows, similar: float = 0.6, contained: float = 0.4, min_row_conf: float = 0.0):
    """merge_rows with its thresholds set, after dropping rows read with low mean confidence."""
    return merge_rows([row for row in rows if row[2] >= min_row_conf], similar, contained)


def main(model: str, folders: list[str], limit: int = 64, lookalike_nats: tuple[float, ...] = (),
         double_blanks: tuple[float, ...] = ()) -> None:  # fmt: skip
    pipe = Pipeline.from_pretrained(model)
    tok = pipe.processor.tokenizer
    blank = tok.pad_token_id
    vocab = pipe.model.config.text_config.vocab_size
    cjk_ids = wide_tokens(tok, vocab)
    letters = letter_tokens(tok, vocab)
    model_nats = pipe.model.config.lookalike_nats
    variants = (
        {
            "greedy": {},
            "cjk-run": {"cjk_runs": True},
            "cjk-run, merge contained 0.6": {"cjk_runs": True, "contained": 0.6},
            "cjk-run, merge similar 0.5": {"cjk_runs": True, "similar": 0.5},
            "cjk-run, rows conf>=0.3": {"cjk_runs": True, "min_row_conf": 0.3},
            "cjk-run, rows conf>=0.4": {"cjk_runs": True, "min_row_conf": 0.4},
        }
        | {f"library, look-alikes {nats}": {"lookalike_nats": nats} for nats in lookalike_nats}
        | {f"library, double letters {t}": {"double_blank": t} for t in double_blanks}
    )
    for folder in folders:
        scores = {name: [] for name in variants}
        for sample in itertools.islice(iter_shards(folder), limit):
            pixels = pipe.processor.image_tensor(sample.image)[None]
            with torch.inference_mode():
                probs = pipe.model.reading_logits(pipe.model.vision_vocab.grid(pixels))[0].float().softmax(-1)
            for name, options in variants.items():
                options = dict(options)
                merge = {k: options.pop(k) for k in ("contained", "similar", "min_row_conf") if k in options}
                if "double_blank" in options:
                    rows = greedy_rows(probs.log()[None], blank, cjk_ids, model_nats)[0]
                    split = greedy_rows(probs.log()[None], blank, cjk_ids, model_nats, letters, options["double_blank"])
                    lines = merge_rows(rows, given=split[0])
                elif "lookalike_nats" in options:
                    lines = merge_rows(greedy_rows(probs.log()[None], blank, cjk_ids, options["lookalike_nats"])[0])
                else:
                    lines = merge_variant(rows_of(probs, blank, cjk_ids=cjk_ids, **options), **merge)
                text = "\n".join(tok.decode(ids, skip_special_tokens=True).strip() for ids in lines)
                scores[name].append(Levenshtein.normalized_distance(text, sample.target))
        for name, values in scores.items():
            print(f"{folder}\t{name}\t{sum(values) / len(values):.3f}\tn={len(values)}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("data", nargs="+")
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--lookalike-nats", default="", help="comma-separated: the library's decoding at each")
    parser.add_argument("--double-letter-blank", default="", help="comma-separated: the library's decoding at each")
    args = parser.parse_args()
    nats = tuple(float(n) for n in args.lookalike_nats.split(",") if n)
    blanks = tuple(float(t) for t in args.double_letter_blank.split(",") if t)
    main(args.model, args.data, args.limit, nats, blanks)
