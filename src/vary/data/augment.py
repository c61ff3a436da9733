"""Training-time document augmentation, matching the official Vary/Nougat `train_transform`.

The official pipeline (Vary's vary/model/plug/transforms.py, taken from Nougat) is an albumentations
Compose in which every transform fires independently with a small probability:

    erosion or dilation (2x2 kernel)          p=0.02
    Affine shear x 0..3 deg, y -3..0 deg       p=0.03
    ShiftScaleRotate (shift x 0..4%, y 0..3%,
        scale -15%..+3%, rotate +-2 deg)       p=0.03
    GridDistortion (5 steps, limit 0.05)       p=0.04
    translate 0..5 px + ElasticTransform
        (alpha 50, sigma 12)                   p=0.04
    RandomBrightnessContrast (+-0.1)           p=0.03
    ImageCompression (JPEG quality 95..100)    p=0.07
    GaussNoise (variance 0..20)                p=0.08
    GaussianBlur (3x3)                         p=0.03

We re-implement it with Pillow and numpy (no albumentations/opencv dependency: both are heavy and
albumentations pins its own opencv build). Empty space is filled with white, as in the official code.
All randomness comes from the `rng` argument, so a training position always gets the same image.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

WHITE = 255


@dataclass(frozen=True)
class AugmentConfig:
    """Probability of each transform (defaults: the official values). Set one to 1.0 to test it."""

    p_erode_dilate: float = 0.02
    p_shear: float = 0.03
    p_shift_scale_rotate: float = 0.03
    p_grid: float = 0.04
    p_elastic: float = 0.04
    p_brightness_contrast: float = 0.03
    p_jpeg: float = 0.07
    p_noise: float = 0.08
    p_blur: float = 0.03


OFFICIAL = AugmentConfig()


def augment_document(image: Image.Image, rng: random.Random, config: AugmentConfig = OFFICIAL) -> Image.Image:
    """Apply the official document augmentation; returns an image of the same size and mode (RGB or L)."""
    mode = image.mode if image.mode in ("RGB", "L") else "RGB"
    img = image.convert(mode)
    np_rng = None  # made only when a transform needs array noise

    def nprng() -> np.random.Generator:
        nonlocal np_rng
        np_rng = np_rng or np.random.default_rng(rng.getrandbits(64))
        return np_rng

    if rng.random() < config.p_erode_dilate:
        img = _morph(img, erode=rng.random() < 0.5)
    if rng.random() < config.p_shear:
        img = _affine(img, shear_x=rng.uniform(0, 3), shear_y=rng.uniform(-3, 0))
    if rng.random() < config.p_shift_scale_rotate:
        img = _affine(
            img,
            shift=(rng.uniform(0, 0.04), rng.uniform(0, 0.03)),
            scale=1 + rng.uniform(-0.15, 0.03),
            rotate=rng.uniform(-2, 2),
            resample=Image.Resampling.BICUBIC,
        )
    if rng.random() < config.p_grid:
        img = _grid_distortion(img, rng, steps=5, limit=0.05)
    if rng.random() < config.p_elastic:
        img = _affine(img, shift_px=(rng.randint(0, 5), rng.randint(0, 5)))
        img = _elastic(img, nprng(), alpha=50.0, sigma=12.0)
    if rng.random() < config.p_brightness_contrast:
        img = _brightness_contrast(img, contrast=1 + rng.uniform(-0.1, 0.1), brightness=rng.uniform(-0.1, 0.1))
    if rng.random() < config.p_jpeg:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=rng.randint(95, 100))
        img = Image.open(io.BytesIO(buf.getvalue())).convert(mode)
    if rng.random() < config.p_noise:
        std = math.sqrt(rng.uniform(0, 20))
        arr = np.asarray(img, dtype=np.float32)
        arr = arr + nprng().standard_normal(arr.shape, dtype=np.float32) * std
        img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), mode)
    if rng.random() < config.p_blur:
        img = img.filter(ImageFilter.GaussianBlur(radius=0.8))  # cv2's sigma for a 3x3 kernel
    return img


# ---- transforms --------------------------------------------------------------------------------------
def _morph(img: Image.Image, erode: bool) -> Image.Image:
    """Min (erode: dark text grows) or max (dilate: text thins) over a 2x2 window, like cv2 with a 2x2 kernel."""
    a = np.asarray(img)
    pad = np.pad(a, ((0, 1), (0, 1)) + ((0, 0),) * (a.ndim - 2), mode="edge")
    views = (pad[:-1, :-1], pad[1:, :-1], pad[:-1, 1:], pad[1:, 1:])
    out = np.minimum.reduce(views) if erode else np.maximum.reduce(views)
    return Image.fromarray(out, img.mode)


def _affine(
    img: Image.Image,
    shear_x: float = 0.0,
    shear_y: float = 0.0,
    shift: tuple[float, float] = (0.0, 0.0),
    shift_px: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
    rotate: float = 0.0,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
) -> Image.Image:
    """Shear/scale/rotate about the centre, then translate; empty space becomes white."""
    w, h = img.size
    cx, cy = w / 2, h / 2
    t = math.radians(rotate)
    # forward map: p' = c + S R H (p - c) + shift
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    shear = np.array([[1, math.tan(math.radians(shear_x))], [math.tan(math.radians(shear_y)), 1]])
    fwd = scale * rot @ shear
    inv = np.linalg.inv(fwd)
    tx, ty = shift[0] * w + shift_px[0], shift[1] * h + shift_px[1]
    # Pillow wants the inverse map: p = inv (p' - c - shift) + c
    off = np.array([cx, cy]) - inv @ np.array([cx + tx, cy + ty])
    coeffs = (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1])
    fill = WHITE if img.mode == "L" else (WHITE,) * 3
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, resample=resample, fillcolor=fill)


def _grid_knots(n: int, steps: int, limit: float, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """Cell borders along one axis: evenly spaced in the output, each cell stretched by 1 +- limit in the source."""
    knots_out = np.linspace(0, n, steps + 1)
    sizes = np.array([1 + rng.uniform(-limit, limit) for _ in range(steps)]) * n / steps
    return knots_out, np.concatenate([[0.0], np.cumsum(sizes)])


def _grid_distortion(img: Image.Image, rng: random.Random, steps: int, limit: float) -> Image.Image:
    w, h = img.size
    xo, xi = _grid_knots(w, steps, limit, rng)
    yo, yi = _grid_knots(h, steps, limit, rng)
    # The map is piecewise linear per axis, so a steps x steps mesh of quads represents it exactly.
    src_x, src_y = np.meshgrid(xi, yi)
    return _mesh_warp(img, xo, yo, src_x, src_y)


def _elastic(img: Image.Image, rng: np.random.Generator, alpha: float, sigma: float) -> Image.Image:
    """Elastic deformation: uniform noise smoothed by a Gaussian of `sigma` px, scaled by `alpha`.

    The displacement field is smooth at the scale of sigma, so we sample it on a grid of sigma px
    (noise at 1/f resolution blurred by sigma/f: f x fewer samples averaged per axis, hence alpha/f) and
    warp with a mesh of quads through that grid: the same field, ~50x cheaper than a per-pixel remap.
    """
    w, h = img.size
    f = max(1, int(sigma))
    lw, lh = math.ceil(w / f) + 1, math.ceil(h / f) + 1
    dx, dy = (
        _gaussian(rng.uniform(-1, 1, size=(lh, lw)).astype(np.float32), sigma / f) * (alpha / f) for _ in range(2)
    )
    xo, yo = np.arange(lw) * f, np.arange(lh) * f
    gx, gy = np.meshgrid(xo, yo)
    return _mesh_warp(img, xo, yo, gx + dx, gy + dy)


def _gaussian(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected borders."""
    r = max(1, int(3 * sigma + 0.5))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(a, r, mode="reflect")
    rows = np.lib.stride_tricks.sliding_window_view(pad, len(k), axis=1) @ k
    return (np.lib.stride_tricks.sliding_window_view(rows, len(k), axis=0) @ k).astype(np.float32)


def _mesh_warp(img: Image.Image, xo, yo, src_x: np.ndarray, src_y: np.ndarray) -> Image.Image:
    """Warp with Pillow's MESH transform: output cell [xo[j]..xo[j+1]] x [yo[i]..yo[i+1]] samples the
    source quadrilateral through the displaced corners src_*[i:i+2, j:j+2]; outside the image is white."""
    xo, yo = np.asarray(xo).astype(int), np.asarray(yo).astype(int)
    bx0, by0 = np.meshgrid(xo[:-1], yo[:-1])
    bx1, by1 = np.meshgrid(xo[1:], yo[1:])
    boxes = np.stack([bx0, by0, bx1, by1], -1).reshape(-1, 4).tolist()
    # quad corners: upper-left, lower-left, lower-right, upper-right
    corners = [(src_x[:-1, :-1], src_y[:-1, :-1]), (src_x[1:, :-1], src_y[1:, :-1]),
               (src_x[1:, 1:], src_y[1:, 1:]), (src_x[:-1, 1:], src_y[:-1, 1:])]  # fmt: skip
    quads = np.stack([c for pair in corners for c in pair], -1).reshape(-1, 8).astype(float).tolist()
    mesh = [(tuple(b), tuple(q)) for b, q in zip(boxes, quads, strict=True)]
    fill = WHITE if img.mode == "L" else (WHITE,) * 3
    return img.transform(img.size, Image.Transform.MESH, mesh, resample=Image.Resampling.BILINEAR, fillcolor=fill)


def _brightness_contrast(img: Image.Image, contrast: float, brightness: float) -> Image.Image:
    """albumentations' RandomBrightnessContrast with brightness_by_max: out = in * contrast + brightness * 255."""
    lut = [min(255, max(0, round(v * contrast + brightness * 255))) for v in range(256)]
    return img.point(lut * len(img.getbands()))
