"""Photographs the bundled model never saw, for the nature-sentence target (issue 33).

The training photographs are scikit-image's 14 (vary.data.generators.natural); no photo can be downloaded here,
so the held-out set is the distinct photographs that other installed packages happen to ship (matplotlib's
sample data, TeX Live documentation, the Rust embedded book), each whole and as four seeded random crops
(half to full side), so 9 photographs give 45 images:

    python research/reader/heldout_photos.py /work/data/photos-heldout
    vary data generate natural --input-dir /work/data/photos-heldout --size 512 --out data/reader/photos-heldout
    vary eval run --data data/reader/photos-heldout --model src/vary/assets/model --out eval/photos-heldout
"""

from __future__ import annotations

import random
import sys
import sysconfig
from pathlib import Path

from PIL import Image

TEXLIVE = Path("/usr/share/doc/texlive-doc")
PHOTOS = {  # name: where it is installed (checked by eye: photographs, not drawings or screenshots)
    "grace_hopper": Path(sysconfig.get_paths()["purelib"]) / "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
    "lake_reeds": TEXLIVE / "pdftex/samplepdftex/pic16.png",
    "forest_lake": TEXLIVE / "pdftex/samplepdftex/pic.jpg",
    "child": TEXLIVE / "generic/latex-notes-zh-cn/src/dscf4684.jpg",
    "people": TEXLIVE / "xelatex/cqubeamer/figure/go.png",
    "campus": TEXLIVE / "xelatex/cqubeamer/figure/CQU_Campus_D.jpg",
    "pier": Path("/usr/share/texlive/texmf-dist/tex/latex/beamertheme-npbt/images/NPBT_SC_background.jpg"),
    "circuit_board": Path.home() / ".rustup/toolchains/stable-x86_64-unknown-linux-gnu/share/doc/rust/html"
    "/embedded-book/assets/f3.jpg",
    "circuit_board_wired": Path.home() / ".rustup/toolchains/stable-x86_64-unknown-linux-gnu/share/doc/rust/html"
    "/embedded-book/assets/verify.jpeg",
}


def main(out: Path, crops: int = 4, seed: int = 0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for name, path in PHOTOS.items():
        if not path.is_file():
            print(f"missing: {name} ({path})")
            continue
        image = Image.open(path).convert("RGB")
        image.save(out / f"{name}.png")
        for k in range(crops):
            w, h = image.size
            side = rng.uniform(0.5, 1.0)
            cw, ch = int(w * side), int(h * side)
            x, y = rng.randrange(w - cw + 1), rng.randrange(h - ch + 1)
            image.crop((x, y, x + cw, y + ch)).save(out / f"{name}-crop{k}.png")
    print(f"{len(list(out.glob('*.png')))} images in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
