"""Document augmentation: each transform works alone, shapes and modes are kept, seeded, rare by default."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vary.data.augment import OFFICIAL, AugmentConfig, augment_document

NAMES = [f.name for f in dataclasses.fields(AugmentConfig)]


def _page(size: int = 160, mode: str = "RGB") -> Image.Image:
    image = Image.new(mode, (size, size), "white")
    draw = ImageDraw.Draw(image)
    for y in range(10, size - 10, 12):
        draw.text((8, y), "Vary reads dense documents 0123", fill="black")
    return image


def _only(name: str) -> AugmentConfig:
    return AugmentConfig(**{k: (1.0 if k == name else 0.0) for k in NAMES})


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_each_transform_changes_the_page_but_keeps_size_and_mode(name, mode):
    page = _page(mode=mode)
    out = augment_document(page, random.Random(1), _only(name))
    assert out.size == page.size and out.mode == mode
    diff = np.abs(np.asarray(out, dtype=int) - np.asarray(page, dtype=int))
    assert diff.mean() > 0.01, f"{name} did nothing"
    assert augment_document(page, random.Random(1), _only(name)).tobytes() == out.tobytes()  # seeded


def test_geometric_transforms_fill_with_white():
    page = Image.new("RGB", (100, 100), "black")
    cfg = AugmentConfig(**{k: 0.0 for k in NAMES} | {"p_shift_scale_rotate": 1.0})
    out = np.asarray(augment_document(page, random.Random(4), cfg))
    assert out[-1, -1].min() > 200 or out[0, 0].min() > 200  # a corner uncovered by the shrunken page is white


def test_erosion_thickens_dark_text_and_dilation_thins_it():
    page = _page()
    dark = lambda im: (np.asarray(im.convert("L")) < 128).sum()  # noqa: E731
    outs = [augment_document(page, random.Random(s), _only("p_erode_dilate")) for s in range(6)]
    assert {dark(o) > dark(page) for o in outs} == {True, False}  # both erosion and dilation occur


def test_official_probabilities_leave_most_pages_untouched():
    page = _page(48)
    changed = sum(augment_document(page, random.Random(i), OFFICIAL).tobytes() != page.tobytes() for i in range(300))
    expected = 1 - np.prod([1 - getattr(OFFICIAL, n) for n in NAMES])  # ~0.33
    assert abs(changed / 300 - expected) < 0.09
    off = AugmentConfig(**{k: 0.0 for k in NAMES})
    assert augment_document(page, random.Random(0), off).tobytes() == page.tobytes()
