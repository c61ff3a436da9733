"""Where the bars of a bar chart stand, from its pixels: one series' bars are same-coloured solid rectangles.

The reading head says where each piece of text is; the layout rules (vary.infer.chart_reading) then need the bars:
how many there are and where, to find each bar's value and cut the labels' line. Without the pixels they take
one bar per value read, so a value missed, merged with its neighbour or a stray number read costs the whole
chart. A simple chart's bars are easy to see: rectangles of one flat colour, equally wide, standing on one
baseline. No maintained library finds a chart's bars (chart parsers are whole models), so it is written here.
Their heights then check the values read over them: value / height is one number per chart (values_from_heights).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np
from PIL import Image
from rapidfuzz.distance import Levenshtein

MAX_SIDE = 512  # px the search runs at: bars are large, and the dataset's charts are 384-512 px
MIN_SHARE = 0.004  # a candidate colour covers at least this share of the image
CANDIDATES = 8  # the most frequent colours tried (the background among them: it rarely forms bars)
MIN_WIDTH = 0.015  # share of the image's width: narrower rectangles are strokes of text
SOLID = 0.9  # share of a bar's columns its colour must fill on every row of the bar
WIDTH_SPREAD = 0.2  # bars' widths agree within this share of their median
EDGE = 4  # px: bars' baselines agree within this (a gridline over the baseline moves ends by its width)
GRIDLINE = 3  # px: a line this thick drawn across a bar does not cut it
# A bar's value and its height agree within this share of the tallest bar's height. Dev set (52 English charts
# with the values they were drawn with): the drawn values sit within 0.0036 of the tallest bar (1.2 px) of one
# scale through the baseline, so the tolerance is the bars' pixel rounding, not the values' precision.
HEIGHT_TOLERANCE = 0.006
MAX_CANDIDATES = 10_000  # numbers a bar's height allows, at most, for a reading to be checked against them
# Where no scale fits most readings (a Chinese chart with three of five values misread), the y axis' labels show
# the scale too: value / its height over the baseline. Their rows place them only to half a grid row, so that
# scale is rough: on the dev charts whose readings gave one, the labels' agreed within 2% on 80 of 110, within 5%
# on 101 (the rest: labels misread). A group of two or more readings that fit one scale is taken when that scale
# is within this share of the labels' (the largest such group; dev Chinese 0.316 -> 0.327 at 5%, 10% or 20%).
TICK_SCALE_TOLERANCE = 0.05


@dataclass(frozen=True)
class Bar:
    """A bar: left, right, top, bottom as fractions of the image's width and height (find_bars), or in other
    units after `scaled`; `downward`: it hangs below the baseline (a negative value), its value under it."""

    left: float
    right: float
    top: float
    bottom: float
    downward: bool = False

    @property
    def centre(self) -> float:
        return (self.left + self.right) / 2

    def scaled(self, x: float, y: float) -> Bar:
        """The bar in units of 1/x of the width and 1/y of the height (frames and grid rows, say)."""
        return Bar(self.left * x, self.right * x, self.top * y, self.bottom * y, self.downward)


def find_bars(image: Image.Image) -> list[Bar]:
    """The bars of one series, left to right; [] when no colour forms two or more of them.

    Each frequent colour is a candidate: the columns it fills for at least 3% of the height are cut into runs,
    and each run's rows that the colour fills (SOLID) make a rectangle. A colour's rectangles are its bars when
    there are at least two, equally wide (WIDTH_SPREAD), on one baseline (the bottom of upward bars or the top
    of downward ones, within EDGE px), and not all of one height (the plot's background between gridlines makes
    rectangles too, but equal ones). The colour whose bars cover the most area wins."""
    image = image.convert("RGB")
    if max(image.size) > MAX_SIDE:
        k = MAX_SIDE / max(image.size)
        image = image.resize((max(1, round(image.width * k)), max(1, round(image.height * k))), Image.NEAREST)
    pixels = np.asarray(image, dtype=np.int32) >> 4  # 16 levels a channel: anti-aliased edges fall away
    codes = (pixels[..., 0] << 8) | (pixels[..., 1] << 4) | pixels[..., 2]
    h, w = codes.shape
    counts = np.bincount(codes.ravel(), minlength=4096)
    order = np.argsort(counts)[::-1]
    best: list[tuple[int, int, int, int]] = []
    for colour in order[:CANDIDATES]:
        if counts[colour] < MIN_SHARE * h * w:
            break
        bars = _rectangles(codes == colour)
        if _area(bars) > _area(best) and _one_series(bars):
            best = bars
    if not best:
        return []
    base = _baseline(best)
    return [Bar(x0 / w, x1 / w, y0 / h, y1 / h, downward=y1 - base > EDGE) for x0, x1, y0, y1 in _with_flat_bars(best)]


def _rectangles(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(x0, x1, y0, y1), ends exclusive, of the solid upright rectangles in a colour's mask."""
    h, w = mask.shape
    tall = mask.sum(0) >= max(3, 0.03 * h)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], tall.astype(np.int8), [0]])))
    found = []
    for x0, x1 in zip(edges[::2], edges[1::2], strict=True):
        if x1 - x0 < max(3, MIN_WIDTH * w) or x1 - x0 > 0.35 * w:
            continue
        rows = np.flatnonzero(mask[:, x0:x1].mean(1) >= SOLID)
        if rows.size == 0:
            continue
        # the longest run of rows, over gaps of up to GRIDLINE rows: the bar (some styles draw gridlines over it)
        cuts = np.flatnonzero(np.diff(rows) > GRIDLINE + 1)
        starts, ends = np.concatenate([[0], cuts + 1]), np.concatenate([cuts, [rows.size - 1]])
        i = int(np.argmax(ends - starts))
        y0, y1 = int(rows[starts[i]]), int(rows[ends[i]]) + 1
        if y1 - y0 >= 3:
            found.append((int(x0), int(x1), y0, y1))
    return found


def _area(bars: list[tuple[int, int, int, int]]) -> int:
    return sum((x1 - x0) * (y1 - y0) for x0, x1, y0, y1 in bars)


def _one_series(bars: list[tuple[int, int, int, int]]) -> bool:
    """Whether rectangles look like one series' bars (see find_bars)."""
    if len(bars) < 2:
        return False
    widths = np.array([x1 - x0 for x0, x1, _, _ in bars])
    if np.abs(widths - np.median(widths)).max() > max(1.0, WIDTH_SPREAD * np.median(widths)):
        return False
    tops, bottoms = np.array([b[2] for b in bars]), np.array([b[3] for b in bars])
    if np.ptp(tops) <= EDGE and np.ptp(bottoms) <= EDGE:
        return False  # all of one height: more likely the background between gridlines
    base = _baseline(bars)
    return all(abs(y0 - base) <= EDGE or abs(y1 - base) <= EDGE for _, _, y0, y1 in bars)


def _baseline(bars: list[tuple[int, int, int, int]]) -> int:
    """The y most bars' bottom (upward bars) or top (downward ones) lies at."""
    ends = np.array([y for bar in bars for y in bar[2:]])
    return int(max(ends, key=lambda y: int((np.abs(ends - y) <= EDGE).sum())))


def _with_flat_bars(bars: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Bars of (nearly) zero height have no rectangle: where the gap between two bars' centres is a whole number
    of times (two or more) the smallest gap, the missing ones are put back, flat on the baseline. The categories
    of a bar chart are equally spaced; flat bars at either end cannot be told from the margin."""
    if len(bars) < 2:
        return bars
    centres = [(x0 + x1) / 2 for x0, x1, _, _ in bars]
    step = min(b - a for a, b in zip(centres, centres[1:], strict=False))
    base, half = _baseline(bars), (bars[0][1] - bars[0][0]) / 2
    out = [bars[0]]
    for bar, left, right in zip(bars[1:], centres, centres[1:], strict=False):
        missing = round((right - left) / step) - 1
        if missing > 0 and abs((right - left) / step - (missing + 1)) < 0.15:
            for k in range(1, missing + 1):
                x = left + k * (right - left) / (missing + 1)
                out.append((round(x - half), round(x + half), base, base))
        out.append(bar)
    return out


def values_from_heights(numbers: list[str | None], bars: list[Bar],
                        ticks: list[tuple[float, float]] = ()) -> list[str | None]:  # fmt: skip
    """The numbers read over `bars` (None: none read), checked against the bars' heights.

    A bar chart's bars rise from a baseline at 0, so value / height is one number for the whole chart. That
    scale is the one most readings fit (within HEIGHT_TOLERANCE: at least two, at least half of those read, and
    no other scale as many); failing that, the one the most readings fit (two or more) near the scale of the y
    axis' labels, `ticks` ((value, vertical position) in the bars' units; TICK_SCALE_TOLERANCE). A reading it
    does not fit is a misread (a digit taken for another, one dropped, a neighbour's value) and becomes the
    number the bar's height allows, with the reading's decimals (else the chart's most usual), that is nearest
    the reading in digits (Levenshtein; then nearest the height). A bar read as nothing gets a number only when
    its height allows just one. Without such a scale (an axis that does not start at 0, most readings wrong) the
    readings stay as they are."""
    heights = [(bar.bottom - bar.top) * (-1 if bar.downward else 1) for bar in bars]
    tolerance = HEIGHT_TOLERANCE * max(map(abs, heights), default=0.0)
    read = [(float(n), h) for n, h in zip(numbers, heights, strict=True) if n is not None]
    groups = set()  # the readings each reading's scale fits
    for value, height in read:
        if abs(height) > tolerance and value / height > 0:
            scale = value / height
            groups.add(frozenset(i for i, (v, h) in enumerate(read) if abs(v - scale * h) <= scale * tolerance))
    group = _largest(groups)
    if group is not None and 2 * len(group) < len(read):
        group = None  # fewer than half the readings: ask the axis
    if group is None and (axis := _axis_scale(ticks, bars)):
        group = _largest({g for g in groups if abs(_fit(read, g) - axis) <= TICK_SCALE_TOLERANCE * axis})
    if group is None:
        return list(numbers)  # no scale, or two that as many readings fit
    scale = _fit(read, group)
    usual = statistics.mode(_decimals(n) for n in numbers if n is not None)
    checked = []
    for number, height in zip(numbers, heights, strict=True):
        expected, allowed = scale * height, scale * tolerance
        if number is not None and abs(float(number) - expected) <= allowed:
            checked.append(number)
            continue
        candidates = []  # with the reading's decimals, else the chart's ("4" read for 1.4)
        for decimals in dict.fromkeys(([] if number is None else [_decimals(number)]) + [usual]):
            step = 10.0**-decimals
            first, last = math.ceil((expected - allowed) / step), math.floor((expected + allowed) / step)
            if last - first < MAX_CANDIDATES:
                candidates = [f"{k * step:.{decimals}f}" for k in range(first, last + 1)]
            if candidates:
                break
        if number is not None and candidates:
            checked.append(min(candidates, key=lambda c: (Levenshtein.distance(c, number), abs(float(c) - expected))))
        else:
            checked.append(candidates[0] if len(candidates) == 1 else number)
    return checked


def _largest(groups: set[frozenset]) -> frozenset | None:
    """The largest group of two or more readings, when no other is as large."""
    sizes = sorted(map(len, groups), reverse=True)
    return max(groups, key=len) if sizes and sizes[0] >= 2 and sizes[1:2] != sizes[:1] else None


def _fit(read: list[tuple[float, float]], group: frozenset) -> float:
    """value / height of the readings in `group`: least squares through the baseline."""
    return sum(read[i][0] * read[i][1] for i in group) / sum(read[i][1] ** 2 for i in group)


def _axis_scale(ticks: list[tuple[float, float]], bars: list[Bar]) -> float | None:
    """value / height that the y axis' labels show (the median over its non-zero labels), or None."""
    if not ticks or not bars:
        return None
    baseline = statistics.median(bar.top if bar.downward else bar.bottom for bar in bars)
    scales = [value / (baseline - y) for value, y in ticks if value and y != baseline]
    scale = statistics.median(scales) if scales else None
    return scale if scale and scale > 0 else None


def _decimals(number: str) -> int:
    return len(number.partition(".")[2])
