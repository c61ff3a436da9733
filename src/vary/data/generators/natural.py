"""natural: photographs -> one of the paper's five "nature" sentences (Vary-tiny's negative samples).

With `--input-dir` (e.g. COCO train2017): one sample per image file, sorted by path; the longest side
is reduced to `size` (never enlarged) and stored as JPEG. Files that are not images (by extension)
are rejected while indexing; images that fail to decode are skipped per sample. Both are reported in
the manifest.

Without a folder (a demo or a smoke test): the photographs shipped inside scikit-image's wheel
(astronaut, coffee, chelsea the cat, a rocket, motorcycles, the Hubble deep field...; read from its
data folder, no download). There are only ~14 of them, so every sample is a random crop (40-100% of
the side), flip and small colour/brightness change of one photo. Good for a demo, not for training:
use a real photo collection for that.

Targets are English whatever the page language, as in the paper; `--lang mix` means English here.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps, UnidentifiedImageError

from vary.data.sample import Sample, SkipSample
from vary.prompts import NATURE_SENTENCES

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
# scikit-image's bundled photographs (not its synthetic or microscopy images).
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
)


def skimage_photo_dir() -> Path:
    try:
        import skimage
    except ImportError as e:
        raise RuntimeError(
            "natural without --input-dir uses the photographs shipped with scikit-image; "
            "install it (pip install scikit-image==0.26.0) or pass --input-dir with your photos"
        ) from e
    return Path(skimage.__file__).parent / "data"


class NaturalGenerator:
    name = "natural"
    image_format = "jpg"
    langs = ("en",)

    def __init__(
        self, count: int | None = None, lang: str = "en", size: int = 1024, input_dir: str | Path | None = None
    ):
        if lang != "en":
            raise ValueError("natural: the targets are the paper's English sentences; use --lang en")
        self.size, self.skipped = int(size), []
        self.demo = input_dir is None
        if self.demo:
            if count is None:
                raise ValueError("natural without --input-dir needs --count (demo photos are cropped at random)")
            self.root = skimage_photo_dir()
            self.files = [f for f in SKIMAGE_PHOTOS if (self.root / f).is_file()]
            if not self.files:
                raise FileNotFoundError(f"no scikit-image photographs found in {self.root}")
            self.count = int(count)
            return
        self.root = Path(input_dir)
        if not self.root.is_dir():
            raise FileNotFoundError(f"input folder {self.root} does not exist")
        self.files = []
        for path in sorted(p for p in self.root.rglob("*") if p.is_file() and not p.name.startswith(".")):
            rel = str(path.relative_to(self.root))
            if path.suffix.lower() not in IMAGE_EXTS:
                self.skipped.append({"input": rel, "reason": f"not an image file (extension {path.suffix or 'none'})"})
            elif path.stat().st_size == 0:
                self.skipped.append({"input": rel, "reason": "empty file"})
            else:
                self.files.append(rel)
        if not self.files and not self.skipped:
            raise FileNotFoundError(f"input folder {self.root} holds no files")
        self.count = len(self.files) if count is None else min(int(count), len(self.files))

    def __len__(self) -> int:
        return self.count

    def describe(self) -> dict:
        return {"demo_photos": self.files} if self.demo else {"images": len(self.files)}

    def make(self, index: int, rng: random.Random) -> Sample:
        rel = self.files[rng.randrange(len(self.files))] if self.demo else self.files[index]
        try:
            with Image.open(self.root / rel) as im:
                image = ImageOps.exif_transpose(im).convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise SkipSample(f"{rel}: unreadable image ({type(e).__name__}: {e})") from e
        meta = {"file": rel if not self.demo else f"skimage:{rel}"}
        if self.demo:
            image, meta["crop"] = self._jitter(image, rng)
        if max(image.size) > self.size:
            image.thumbnail((self.size, self.size), Image.Resampling.BICUBIC)
        target = rng.choice(NATURE_SENTENCES)
        return Sample(key="", image=image, target=target, task="natural", lang="en", kind=self.name, meta=meta)

    @staticmethod
    def _jitter(image: Image.Image, rng: random.Random) -> tuple[Image.Image, list[int]]:
        """A random crop, flip and colour change, so a few photos give many different samples."""
        w, h = image.size
        scale = rng.uniform(0.4, 1.0)
        cw, ch = max(16, int(w * scale)), max(16, int(h * scale * rng.uniform(0.8, 1.25)))
        cw, ch = min(cw, w), min(ch, h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        image = image.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        image = ImageEnhance.Color(image).enhance(rng.uniform(0.7, 1.3))
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
        return image, [x, y, cw, ch]
