"""The learning curve of a run: held-out loss with own vs other images per character, against CPU-minutes.

Reads RUN/eval.jsonl (written every train.eval_every steps) and RUN/log.jsonl (its "time": seconds of training
since the start, evaluations excluded) and prints a markdown table; the gap (other - own) is what gate (a) of
issue 33 asks to reach 1 nat per character.

    python research/prose-reader/curve.py runs/prose-reader
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(run: Path) -> None:
    seconds = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        seconds[record["step"]] = record["time"]
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    sets = sorted({key.split("/")[0] for e in evals for key in e if key != "step"})
    head = " | ".join(f"{s} own | {s} other | {s} gap" for s in sets)
    print(f"| step | CPU-min | {head} |")
    print("|---|---|" + "---|" * (3 * len(sets)))
    for e in evals:
        cells = []
        for s in sets:
            own, other = e[f"{s}/loss"], e[f"{s}/loss_other_images"]
            cells += [f"{own:.3f}", f"{other:.3f}", f"**{other - own:+.4f}**"]
        print(f"| {e['step']} | {seconds.get(e['step'], 0) / 60:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
