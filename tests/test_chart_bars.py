"""Bars found from a chart's pixels (vary.infer.chart_bars): how many, where, which way."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from vary.infer.chart_bars import find_bars


def draw(values, color="#1f77b4", grid_over=False, title="Sales by year") -> Image.Image:
    fig = Figure(figsize=(5.12, 3.84), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bars = ax.bar([f"c{i}" for i in range(len(values))], values, color=color, width=0.6)
    ax.bar_label(bars, padding=3)
    ax.set_title(title, fontsize=20)
    if grid_over:  # some styles draw gridlines across the bars
        ax.set_axisbelow(False)
        ax.grid(True, axis="y", color="white", linewidth=2)
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])


def test_bars_left_to_right_with_a_flat_one_and_one_hanging_down():
    image = draw([3, 0, 5, -2, 4], grid_over=True)
    bars = find_bars(image)
    assert len(bars) == 5  # the zero bar has no rectangle: put back between its neighbours
    centres = [bar.centre for bar in bars]
    steps = np.diff(centres)
    assert np.all(steps > 0) and np.ptp(steps) < 0.01  # equally spaced, as the categories are
    assert [bar.downward for bar in bars] == [False, False, False, True, False]
    assert bars[1].top == bars[1].bottom  # flat, on the baseline
    assert abs(bars[0].bottom - bars[3].top) < 0.01  # the baseline: upward bars' bottom, downward ones' top
    heights = [bar.bottom - bar.top for bar in bars]
    assert heights[2] > heights[4] > heights[0] > 0  # 5 > 4 > 3
    assert all(0 <= bar.left < bar.right <= 1 and 0 <= bar.top <= bar.bottom <= 1 for bar in bars)


def test_black_bars_beside_black_text_and_a_large_image():
    image = draw([2, 7, 4], color="black", title="IIII llll")  # the title's strokes are black rectangles too
    assert len(find_bars(image)) == 3
    large = image.resize((image.width * 3, image.height * 3))
    assert [round(b.centre, 2) for b in find_bars(large)] == [round(b.centre, 2) for b in find_bars(image)]


def test_no_bars_in_text_or_noise():
    page = Image.new("RGB", (512, 384), "white")
    ImageDraw.Draw(page).multiline_text((20, 20), "Lorem ipsum dolor\nsit amet 1234\n" * 6, fill="black")
    assert find_bars(page) == []
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (384, 512, 3), dtype=np.uint8))
    assert find_bars(noise) == []
    one = draw([5])  # one bar is no series to go by
    assert find_bars(one) == []
