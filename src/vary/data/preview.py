"""`vary data preview`: a contact sheet of random samples (thumbnail, key, task and start of the target).

Samples that record character boxes (blocks' `boxes=true`) show them as red outlines, to check them by eye.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

from vary.data.fonts import FontNotFoundError, draw_text, find_fonts, load_font, text_width
from vary.data.sample import Sample
from vary.data.shards import ReadStats, decode_record, iter_records, list_shards

CELL = 320  # thumbnail box, pixels
TEXT_LINES = 14
FONT_PX = 12


def pick_samples(data: str | Path, n: int, seed: int = 0) -> list[Sample]:
    """Up to n samples chosen at random (reservoir sampling of raw records; only the chosen are decoded)."""
    shards = list_shards(data)
    if not shards:
        raise FileNotFoundError(f"no .tar shards under {data}")
    rng = random.Random(seed)
    picked_shards = rng.sample(shards, min(len(shards), n))
    per_shard = math.ceil(n / len(picked_shards))
    stats, samples = ReadStats(), []
    for shard in picked_shards:
        reservoir: list[tuple[str, dict]] = []
        for seen, record in enumerate(iter_records(shard, stats)):
            if len(reservoir) < per_shard:
                reservoir.append(record)
            elif (j := rng.randrange(seen + 1)) < per_shard:
                reservoir[j] = record
        for key, files in reservoir:
            try:
                samples.append(decode_record(key, files))
            except ValueError as e:
                stats.bad(f"{shard}:{key}", str(e))
    return samples[:n]


def _font():
    try:  # Noto CJK covers Latin and Chinese targets alike
        return load_font(find_fonts("zh", "sans-regular")[0], FONT_PX)
    except FontNotFoundError:
        return load_font(find_fonts("en", "sans-regular")[0], FONT_PX)


def _wrap(font, text: str, width: int, max_lines: int) -> list[str]:
    """Character-level wrapping that keeps the target's own line breaks visible as '⏎'."""
    lines, cur = [], ""
    for ch in text.replace("\n", "⏎ "):
        if text_width(font, cur + ch) > width:
            lines.append(cur)
            cur = ""
            if len(lines) == max_lines:
                lines[-1] = lines[-1][:-1] + "…"
                return lines
        cur += ch
    return lines + ([cur] if cur else [])


def _outline_boxes(image: Image.Image, boxes: list[list[int]]) -> Image.Image:
    """An RGB copy of `image` with each [left, top, right, bottom] box outlined in red."""
    image = image.convert("RGB")
    draw = ImageDraw.Draw(image)
    for left, top, right, bottom in boxes:
        draw.rectangle([left, top, right - 1, bottom - 1], outline=(230, 0, 0), width=max(1, image.width // 256))
    return image


def contact_sheet(data: str | Path, out: str | Path, n: int = 12, seed: int = 0, columns: int = 4) -> Path:
    samples = pick_samples(data, n, seed)
    if not samples:
        raise ValueError(f"no readable samples under {data}")
    font = _font()
    text_h = (TEXT_LINES + 1) * (FONT_PX + 3) + 8
    cols = min(columns, len(samples))
    rows = math.ceil(len(samples) / cols)
    sheet = Image.new("RGB", (cols * (CELL + 10) + 10, rows * (CELL + text_h + 10) + 10), (200, 200, 200))
    draw = ImageDraw.Draw(sheet)
    for i, s in enumerate(samples):
        x, y = 10 + (i % cols) * (CELL + 10), 10 + (i // cols) * (CELL + text_h + 10)
        draw.rectangle([x, y, x + CELL, y + CELL + text_h], fill=(255, 255, 255))
        thumb = _outline_boxes(s.image, s.meta.get("char_boxes", []))
        thumb.thumbnail((CELL, CELL))
        sheet.paste(thumb, (x + (CELL - thumb.width) // 2, y + (CELL - thumb.height) // 2))
        draw.rectangle([x, y, x + CELL, y + CELL], outline=(120, 120, 120))
        ty = y + CELL + 4
        draw_text(sheet, (x + 4, ty), f"{s.key} [{s.task}, {s.lang}]", font, (180, 0, 0))
        for line in _wrap(font, s.target, CELL - 8, TEXT_LINES):
            ty += FONT_PX + 3
            draw_text(sheet, (x + 4, ty), line, font, (0, 0, 0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
