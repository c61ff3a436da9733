"""Image preprocessing for both branches and prompt building, with Pillow + numpy (no torchvision).

High-resolution branch: resize to S x S (bilinear or bicubic, per the checkpoint), (x/255 - mean) / std.
CLIP branch: shortest side -> 224 (bicubic), centre crop 224, CLIP mean/std (as CLIPImageProcessor does).
Multi-crop mode (GOT-OCR2's chat_crop): the page is resized to a grid of S x S tiles whose aspect ratio is
closest to the page's, plus a thumbnail of the whole page; all of them go into ONE image block.
"""

from __future__ import annotations

import functools
import io
import math
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from vary.config import VaryConfig
from vary.modeling.conv_vocab import ROW_STRIDE
from vary.modeling.lexicon import Lexicon
from vary.prompts import get_prompt_style
from vary.templates import get_template

ImageInput = str | Path | bytes | Image.Image
DEFAULT_MAX_PIXELS = 64_000_000  # larger images are refused (decompression-bomb guard)
# A 1 x 60,000,000 PNG is under the pixel limit yet costs gigabytes to resize: extreme shapes are refused too.
MAX_SIDE = 32_768  # pixels, the longest side
MAX_ASPECT = 50  # longest side / shortest side (a long receipt is ~1:20)
LARGE_IMAGE_PIXELS = 16_000_000  # images above this are decoded one at a time (bounds a server's peak memory)
_large_decode = threading.Lock()
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
# An image is text on a dark background (a dark theme's chart or slide, a dark-mode screenshot) when its edges'
# median grey level is below DARK and FLAT_SHARE of the edge pixels lie within FLAT_LEVELS of it: one flat
# colour, as drawn charts and pages have (100% of their edge pixels within 4 levels) and photographs do not
# (at most 78% in the held-out photographs and crops of the training ones, but for one crop of black). Within
# 24 levels, 16 of the 100 crops were taken for dark pages: inverted, 11 of them lost their nature sentence.
DARK = 128
FLAT_SHARE = 0.98
FLAT_LEVELS = 4
DEFAULT_MAX_TILES = 6  # GOT-OCR2's chat_crop: 1 to 6 tiles (+ a thumbnail when there are several)


class ImageError(ValueError):
    """An input that is not a usable image; the message names the file."""


def load_image(source: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open a path, bytes or PIL image as RGB: EXIF rotation applied, alpha flattened on white, 16-bit scaled."""
    name = str(source) if isinstance(source, str | Path) else f"<{type(source).__name__}>"
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, str | Path):
            path = Path(source)
            if not path.is_file():
                raise ImageError(f"{path}: no such file")
            data = path.read_bytes()
        else:
            data = bytes(source)
        if not data:
            raise ImageError(f"{name}: empty file")
        try:
            with warnings.catch_warnings():  # our own pixel limit below replaces Pillow's warning
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
            _check_size(image, name, max_pixels)  # before decoding any pixel
            if image.width * image.height > LARGE_IMAGE_PIXELS:
                with _large_decode:
                    image.load()
            else:
                image.load()
        except Image.DecompressionBombError as err:  # over Pillow's own limit (~179 MP), raised by Image.open
            raise ImageError(f"{name}: over the {max_pixels / 1e6:.0f} MP limit ({err})") from err
        except UnidentifiedImageError as err:
            raise ImageError(f"{name}: not a readable image ({err.__class__.__name__})") from err
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageError(f"{name}: corrupt or truncated image ({err})") from err
    _check_size(image, name, max_pixels)
    return to_rgb(ImageOps.exif_transpose(image))


def on_light_background(image: Image.Image) -> Image.Image:
    """The image with dark text on a light background: inverted when it is drawn light on a flat dark colour
    (DARK, FLAT_SHARE). The bundled reading head learnt dark glyphs on light paper: the example page inverted
    reads at edit distance 0.31 as it is and 0.00 so; dev charts drawn dark (1 English and 4 Chinese of 116)
    read 0% of their values as they are."""
    w, h = image.size  # only the four edge lines are converted: a page can be tens of megapixels
    lines = [image.crop(box).convert("L") for box in ((0, 0, w, 1), (0, h - 1, w, h), (0, 0, 1, h), (w - 1, 0, w, h))]
    edges = np.concatenate([np.asarray(line, dtype=np.int16).ravel() for line in lines])
    median = np.median(edges)
    flat = np.mean(np.abs(edges - median) <= FLAT_LEVELS) >= FLAT_SHARE
    return ImageOps.invert(image.convert("RGB")) if median < DARK and flat else image


def _check_size(image: Image.Image, name: str, max_pixels: int) -> None:
    problem = size_problem(*image.size, max_pixels)
    if problem:
        raise ImageError(f"{name}: {problem}")


def size_problem(width: int, height: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why an image of this size is refused (read from its header, before any pixel is decoded), or None."""
    if width * height > max_pixels:
        return f"{width}x{height} = {width * height / 1e6:.0f} megapixels is over the {max_pixels / 1e6:.0f} MP limit"
    if width == 0 or height == 0:
        return "image has no pixels"
    if max(width, height) > MAX_SIDE:
        return f"{width}x{height}: a side over {MAX_SIDE} pixels is refused (resizing it would exhaust memory)"
    if max(width, height) > MAX_ASPECT * min(width, height):
        return (f"{width}x{height}: an aspect ratio over {MAX_ASPECT}:1 is refused "
                "(resizing it would exhaust memory); crop the image first")  # fmt: skip
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale the used range to 8 bits instead of clipping at 255.
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        image = Image.fromarray((arr / top * 255).clip(0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


@functools.lru_cache(maxsize=8)
def _level_table(mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(3, 256) float32: the normalized value of each 8-bit level, per channel."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    mean_, std_ = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    return ((levels[None] - mean_[:, None]) / std_[:, None]).float()


def normalize(image: Image.Image, mean, std) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32, (x/255 - mean) / std.

    A lookup of each pixel's level in a 256-entry table per channel: ~9x faster than float arithmetic over the
    pixels, which was most of a training sample's loading time (and bound the data loader of a GPU run).
    """
    table = _level_table(tuple(mean), tuple(std))
    levels = torch.from_numpy(np.asarray(image, dtype=np.int64).transpose(2, 0, 1).reshape(3, -1))
    return torch.gather(table, 1, levels).view(3, image.height, image.width)


def tile_grid(width: int, height: int, tile_size: int, max_tiles: int = DEFAULT_MAX_TILES,
              min_tiles: int = 1) -> tuple[int, int]:  # fmt: skip
    """(columns, rows) of the tile grid for a width x height image, as GOT-OCR2's dynamic_preprocess chooses it.

    The grid whose aspect ratio (columns / rows) is closest to the image's, among grids of min..max tiles
    tried in order of tile count; on a tie the later (larger) grid wins when the image has more than half
    its pixels, so a big page gets more tiles than a small one of the same shape.
    """
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f"need 1 <= min_tiles <= max_tiles, got {min_tiles}, {max_tiles}")
    grids = sorted(
        ((c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if min_tiles <= c * r <= max_tiles),
        key=lambda grid: (grid[0] * grid[1], grid),
    )
    aspect, area = width / height, width * height
    best, best_diff = grids[0], float("inf")
    for columns, rows in grids:
        diff = abs(aspect - columns / rows)
        if diff < best_diff:
            best, best_diff = (columns, rows), diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * columns * rows:
            best = (columns, rows)
    return best


@dataclass
class VaryProcessor:
    config: VaryConfig
    tokenizer: object  # a transformers tokenizer holding the image tokens
    max_pixels: int = DEFAULT_MAX_PIXELS
    lexicon: Lexicon | None = None  # the model folder's word list, for a reading head (vary.modeling.lexicon)

    # --- images ---
    def image_tensor(self, image: ImageInput, scale: float = 1) -> torch.Tensor:
        """High-resolution branch input: (3, S, S); (3, scale * S, scale * S) for a conv vocabulary's reading
        head, which reads any size."""
        size = self.config.image_size
        if scale != 1:  # whole grid cells and tokens at the new size
            size = round(size * scale / 32) * 32
        image = load_image(image, self.max_pixels)
        if image.size != (size, size):
            image = image.resize((size, size), _RESAMPLE[self.config.image_resample])
        return normalize(image, self.config.image_mean, self.config.image_std)

    def region_tensor(self, image: ImageInput, box: tuple[float, float, float, float],
                      scale: float) -> tuple[torch.Tensor, float]:  # fmt: skip
        """A region of the image, `box` = (left, top, right, bottom) as fractions of its width and height, resized
        as the whole image would be at `scale` times image_size wide (the height in proportion), on a white margin
        of ROW_STRIDE px all round: ((3, H, W), H a whole number of grid rows and W of tokens; the scale it was
        resized to). For a reading head to read a piece of a chart again, larger (vary.infer.chart_reading); the
        conv net reads any size."""
        image = load_image(image, self.max_pixels)
        k = round(self.config.image_size * scale / 32) * 32 / image.width  # output px per image px
        (w, h), (left, top, right, bottom) = image.size, box
        x0, y0 = min(max(0, int(left * w)), w - 1), min(max(0, int(top * h)), h - 1)
        x1, y1 = min(w, max(x0 + 1, math.ceil(right * w))), min(h, max(y0 + 1, math.ceil(bottom * h)))
        region = image.crop((x0, y0, x1, y1))
        width, height = max(1, round(region.width * k)), max(1, round(region.height * k))
        region = region.resize((width, height), _RESAMPLE[self.config.image_resample])
        canvas = Image.new("RGB", (math.ceil(width / 32 + 1) * 32, math.ceil(height / ROW_STRIDE + 2) * ROW_STRIDE),
                           "white")  # fmt: skip
        canvas.paste(region, (ROW_STRIDE, ROW_STRIDE))
        pixels = normalize(canvas, self.config.image_mean, self.config.image_std)
        return pixels, k * image.width / self.config.image_size

    def canvas_tensor(self, image: ImageInput, max_tiles: int = DEFAULT_MAX_TILES) -> tuple[torch.Tensor, int, int]:
        """The image resized to the multi-crop tile grid as one tensor: ((3, rows*S, columns*S), columns, rows).
        A conv vocabulary's reading head reads it whole (its grid rows run across the tiles)."""
        size = self.config.image_size
        image = load_image(image, self.max_pixels)
        columns, rows = tile_grid(image.width, image.height, size, max_tiles)
        grid = image.resize((columns * size, rows * size), _RESAMPLE[self.config.image_resample])
        return normalize(grid, self.config.image_mean, self.config.image_std), columns, rows

    def crop_tensors(self, image: ImageInput, max_tiles: int = DEFAULT_MAX_TILES) -> torch.Tensor:
        """Multi-crop input: (n, 3, S, S), the grid's tiles row by row, then a thumbnail when n > 1 (GOT's order)."""
        size = self.config.image_size
        image = load_image(image, self.max_pixels)
        # Normalise the grid once and cut it into tiles with a view: (3, rows*S, cols*S) -> (rows*cols, 3, S, S).
        tiles, columns, rows = self.canvas_tensor(image, max_tiles)
        resample = _RESAMPLE[self.config.image_resample]
        tiles = tiles.view(3, rows, size, columns, size).permute(1, 3, 0, 2, 4).reshape(-1, 3, size, size)
        if columns * rows == 1:
            return tiles
        thumbnail = self.image_tensor(image.resize((size, size), resample))
        return torch.cat([tiles, thumbnail[None]])

    def clip_tensor(self, image: ImageInput) -> torch.Tensor:
        """CLIP branch input: (3, 224, 224) after shortest-side resize and centre crop."""
        size = self.config.clip_image_size
        image = load_image(image, self.max_pixels)
        w, h = image.size
        if (w, h) != (size, size):
            scale = size / min(w, h)
            image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
            left, top = (image.width - size) // 2, (image.height - size) // 2
            image = image.crop((left, top, left + size, top + size))
        return normalize(image, self.config.clip_image_mean, self.config.clip_image_std)

    # --- text ---
    def prompt(self, instruction: str = "", num_images: int = 1, tiles: int = 1) -> str:
        """`tiles` images share each image block (multi-crop mode): tiles x image_token_len <imgpad> in one block."""
        separator = get_prompt_style(self.config.prompt_style).image_separator
        return get_template(self.config.template).prompt(
            separator + instruction, num_images, self.config.image_token_len * tiles
        )

    def prompt_ids(self, instruction: str = "", num_images: int = 1, tiles: int = 1) -> list[int]:
        ids = self.tokenizer(self.prompt(instruction, num_images, tiles), add_special_tokens=True).input_ids
        n_pad = ids.count(self.config.image_patch_token_id)
        expected = num_images * tiles * self.config.image_token_len
        if n_pad != expected:
            raise ValueError(
                f"the tokenizer turned {num_images} image block(s) into {n_pad} <imgpad> ids "
                f"(expected {expected}): tokenizer and model config disagree"
            )
        return ids

    def __call__(
        self, images: list[ImageInput], instructions: list[str] | str = "", crop: bool = False,
        max_tiles: int = DEFAULT_MAX_TILES,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """One image + instruction per sample -> a left-padded generation batch.

        `crop`: multi-crop mode; each sample's tiles (their number may differ from page to page) follow each
        other in `pixel_values`, in the order of their <imgpad> runs, which is the order the model splices them.
        """
        if isinstance(instructions, str):
            instructions = [instructions] * len(images)
        if len(instructions) != len(images):
            raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
        if crop:
            if self.config.clip_config is not None:
                raise ValueError("multi-crop mode is for models without a CLIP branch (GOT-OCR2)")
            pixels = [self.crop_tensors(im, max_tiles) for im in images]
            rows = [self.prompt_ids(text, tiles=len(p)) for text, p in zip(instructions, pixels, strict=True)]
            batch = left_pad(rows, self.tokenizer.pad_token_id or 0)
            batch["pixel_values"] = torch.cat(pixels)
            return batch
        rows = [self.prompt_ids(text) for text in instructions]
        batch = left_pad(rows, self.tokenizer.pad_token_id or 0)
        batch["pixel_values"] = torch.stack([self.image_tensor(im) for im in images])
        if self.config.clip_config is not None:
            batch["pixel_values_clip"] = torch.stack([self.clip_tensor(im) for im in images])
        return batch


def left_pad(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left padding, so every row's last token is its newest one during generation."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row)
        attention_mask[i, width - len(row) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
