"""Copy the data engine's fonts into one folder, the Noto CJK collections cut down to the characters the
nano-ocr data uses (~0.7-1 MB each instead of 20-27 MB): for a machine without network access or font
packages, where they go to ~/.fonts (see train_gpu.sh).

    python research/nano-ocr/subset_fonts.py --out .devcarry/fonts
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from fontTools import subset

from vary.data.fonts import _collection_index, find_fonts
from vary.data.text import common_chars

# Latin, general punctuation, CJK symbols and full-width forms: what Chinese blocks mix in.
RANGES = ((0x20, 0x7F), (0x2000, 0x2070), (0x3000, 0x3040), (0xFF00, 0xFFF0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--zh-chars", type=int, default=1500, help="keep the N most frequent Chinese characters")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    codepoints = {ord(c) for c in common_chars(args.zh_chars)} | {c for a, b in RANGES for c in range(a, b)}
    for path in find_fonts("zh"):
        options = subset.Options()
        options.font_number = _collection_index(path)  # the face load_font uses (Simplified Chinese)
        options.layout_features, options.name_IDs, options.name_languages = ["*"], ["*"], ["*"]
        font = subset.load_font(str(path), options)
        subsetter = subset.Subsetter(options)
        subsetter.populate(unicodes=sorted(codepoints))
        subsetter.subset(font)
        font.save(str(args.out / f"{path.stem}.otf"))  # one face: an .otf, no longer a collection
    for path in find_fonts("en"):
        shutil.copy(path, args.out / path.name)
    print(f"{len(list(args.out.iterdir()))} fonts in {args.out}")


if __name__ == "__main__":
    main()
