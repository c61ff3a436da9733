"""Score a reader model on the held-out real-prose blocks with both of its OCR paths (reading head, decoder).

    python research/reader/score.py runs/reader/model OUT [--limit 64] [--data data/reader/heldout-en ...]

Writes OUT/head and OUT/decoder (the model's files linked, config.json with `ocr_reader` set) and one
`vary eval run` report per data folder under OUT/<folder name>/, then prints each path's edit distance.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def variant(model: Path, out: Path, reader: str) -> Path:
    folder = out / reader
    folder.mkdir(parents=True, exist_ok=True)
    for f in model.iterdir():
        if f.name != "config.json" and f.is_file() and not (folder / f.name).exists():
            (folder / f.name).symlink_to(f.resolve())
    config = json.loads((model / "config.json").read_text())
    config["ocr_reader"] = reader
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--data", nargs="+", default=["data/reader/heldout-en", "data/reader/heldout-zh"])
    parser.add_argument("--readers", nargs="+", default=["reading_head", "decoder"])
    args = parser.parse_args()
    models = [variant(args.model, args.out, reader) for reader in args.readers]
    for data in args.data:
        report = args.out / Path(data).name
        cmd = ["vary", "eval", "run", "--data", data, "--out", str(report), "--limit", str(args.limit)]
        for m in models:
            cmd += ["--model", str(m)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        summary = json.loads((report / "results.json").read_text())["summary"]
        for name, subsets in summary.items():
            for subset, s in subsets.items():
                print(f"{Path(data).name}\t{name}\t{subset}\tED {s['edit_distance']:.3f}\tn {s['n']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
