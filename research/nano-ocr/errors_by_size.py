"""Which type sizes and which words does a model read? `vary eval run` results, by font size and word position.

Joins each scored sample with its held-out record (the blocks source stores `font_px` in the sample's meta)
and prints, per size band: how many samples, the mean normalized edit distance, the share read exactly, and
the share of reference words read (a word counts when it is at the same position in the prediction). Then,
over all samples: single words read exactly, and for lines of several words, how many first words and how
many later words were read.

    vary eval run --data data/heldout/words-en --model runs/words-more2/model --out /tmp/ev --limit 50
    python research/nano-ocr/errors_by_size.py --results /tmp/ev/results.json --data data/heldout/words-en
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from vary.data.shards import iter_shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", required=True, help="results.json written by `vary eval run`")
    parser.add_argument("--data", required=True, help="the held-out shard directory it was run on")
    parser.add_argument("--band", type=int, default=8, help="width of a size band in pixels")
    args = parser.parse_args()

    font_px = {s.key: s.meta["font_px"] for s in iter_shards(args.data) if "font_px" in s.meta}
    bands: dict[int, list[dict]] = defaultdict(list)
    for s in json.loads(Path(args.results).read_text())["samples"]:
        if s["status"] == "ok" and s["id"] in font_px:
            bands[font_px[s["id"]] // args.band * args.band].append(s)
    if not bands:
        raise SystemExit(f"no scored sample of {args.results} has a font size in {args.data}")

    print(f"{'font px':>9} {'n':>4} {'edit dist':>9} {'exact':>6} {'words read':>10}")
    for lo in sorted(bands):
        rows = bands[lo]
        words = [(r, p) for s in rows for r, p in zip_words(s["reference"], s["prediction"])]
        print(
            f"{lo:>4}-{lo + args.band - 1:<4} {len(rows):>4} "
            f"{sum(s['scores']['edit_distance'] for s in rows) / len(rows):>9.3f} "
            f"{sum(s['reference'] == s['prediction'] for s in rows) / len(rows):>6.0%} "
            f"{sum(r == p for r, p in words) / max(1, len(words)):>10.0%}"
        )

    scored = [s for rows in bands.values() for s in rows]
    single = [s for s in scored if len(s["reference"].split()) == 1]
    lines = [zip_words(s["reference"], s["prediction"]) for s in scored if len(s["reference"].split()) > 1]
    later = [pair for words in lines for pair in words[1:]]
    print(f"single words read exactly: {sum(s['reference'] == s['prediction'] for s in single)} of {len(single)}")
    print(f"lines of 2+ words: first word read in {sum(w[0][0] == w[0][1] for w in lines)} of {len(lines)}, "
          f"later words in {sum(r == p for r, p in later)} of {len(later)}")  # fmt: skip


def zip_words(reference: str, prediction: str) -> list[tuple[str, str | None]]:
    """Each reference word with the prediction's word at the same position (None past its end)."""
    predicted = prediction.split()
    return [(w, predicted[i] if i < len(predicted) else None) for i, w in enumerate(reference.split())]


if __name__ == "__main__":
    main()
