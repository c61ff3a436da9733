"""Dense-page crops for the CPU pilot: the top-left S x S corner of a `pages` page, text at full-page scale.

The `pages` generator scales its font with the page height, so a 384 px page holds the same ~80 lines as a
1024 px one, in 3-6 px glyphs: unreadable for a small model, and ~1,500 target tokens. A crop keeps the
glyphs of a large page (here those of a 1024 px page: 14-22 px body text) on a small canvas, so each
sample is a few exact lines. Implemented as a PagesGenerator whose style keeps the full-page font but draws
on a crop-sized canvas (margins and gutter scaled down), so the target is exactly what is drawn.

    python research/page_crops.py --out data/pilot/crops --count 4000 --size 384
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vary.data.engine import GenerateConfig, generate
from vary.data.generators import GENERATORS
from vary.data.generators.pages import PagesGenerator


class PageCropsGenerator(PagesGenerator):
    name = "page-crops"

    def __init__(self, count: int | None, lang: str = "en", size: int = 384, page_size: int | str = 1024, **kw):
        super().__init__(count, lang=lang, size=int(page_size), columns=1, **kw)
        self.crop = int(size)

    def _style(self, rng):
        st = super()._style(rng)  # fonts, leading, ink... of a full page
        scale = self.crop / st.width
        st.margins = tuple(max(4, int(m * scale)) for m in st.margins)
        st.width = st.height = self.crop
        return st


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--size", type=int, default=384, help="crop side in pixels")
    parser.add_argument("--page-size", type=int, default=1024, help="page height the font is scaled for")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="another seed gives other pages (held-out data)")
    args = parser.parse_args()
    GENERATORS["page-crops"] = PageCropsGenerator  # the engine's registry takes classes directly
    generate(GenerateConfig(kind="page-crops", out=args.out, count=args.count, size=args.size, lang="en", seed=args.seed,
                            workers=args.workers, shard_size=500, options={"page_size": args.page_size}))  # fmt: skip


if __name__ == "__main__":
    main()
