"""The shift probe (shift_probe.py beside this file) moves an image by whole token cells.

python3 -m pytest -q research/nano-ocr/test_shift_probe.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # research scripts are not a package
from shift_probe import moved  # noqa: E402


def test_moved_shifts_the_ink_and_fills_with_paper():
    image = np.full((8, 8), 240, dtype=np.uint8)
    image[1:3, 2:4] = 10  # a dark square at rows 1-2, cols 2-3
    out = moved(image, dx=3, dy=2)
    assert out.shape == image.shape and out.dtype == image.dtype
    assert (out[3:5, 5:7] == 10).all()  # moved 2 down, 3 right
    assert (out == 10).sum() == 4 and set(np.unique(out)) == {10, 240}
    assert (moved(image, 0, 0) == image).all()
