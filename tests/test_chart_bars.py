"""Bars found from a chart's pixels (vary.infer.chart_bars): how many, where, which way."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from vary.infer.chart_bars import Bar, find_bars, values_from_heights
from vary.modeling.processor import on_light_background


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


def bars_for(values: list[float], tallest: float = 0.5, baseline: float = 0.9) -> list[Bar]:
    """Bars drawn exactly to `values` on a baseline at 0: the tallest `tallest` of the image high."""
    unit = tallest / max(map(abs, values))
    return [Bar(0.1 * i, 0.1 * i + 0.06, baseline - max(v, 0) * unit, baseline - min(v, 0) * unit, downward=v < 0)
            for i, v in enumerate(values)]  # fmt: skip


def test_a_value_its_bar_disagrees_with_becomes_the_number_the_height_allows_nearest_the_reading():
    bars = bars_for([4625, 3828, 4841, 2442, 4363])
    # a digit taken for another, one dropped; a reading the height cannot tell from the truth (4840) stays
    read = ["4625", "3328", "4840", "244", "4363"]
    assert values_from_heights(read, bars) == ["4625", "3828", "4840", "2442", "4363"]
    # decimals as read, else the chart's: "4" read for 1.4
    assert values_from_heights(["0.7", "1.1", "4"], bars_for([0.7, 1.1, 1.4])) == ["0.7", "1.1", "1.4"]
    assert values_from_heights(["7.5", "1.1", "1.4"], bars_for([0.7, 1.1, 1.4])) == ["0.7", "1.1", "1.4"]
    # a bar hanging down, and a flat one
    assert values_from_heights(["3", "-5", "0", "5"], bars_for([3, -2, 0, 5])) == ["3", "-2", "0", "5"]
    assert values_from_heights(["3", "-2", "8", "5"], bars_for([3, -2, 0, 5])) == ["3", "-2", "0", "5"]


def test_a_bar_read_as_nothing_gets_a_number_only_when_its_height_allows_just_one():
    assert values_from_heights(["6", "3", None], bars_for([6, 3, 3])) == ["6", "3", "3"]
    assert values_from_heights(["42907", "27366", None], bars_for([42907, 27366, 22446])) == [
        "42907", "27366", None]  # fmt: skip


def test_readings_stay_as_read_without_one_scale_most_of_them_fit():
    bars = bars_for([2, 4, 6, 8])
    assert values_from_heights(["6", "9", "1", "3"], bars) == ["6", "9", "1", "3"]  # no two fit one scale
    assert values_from_heights(["2", "4", "9", "12"], bars) == ["2", "4", "9", "12"]  # two scales, two each
    assert values_from_heights(["2", "4", "7", "9", "3"], bars_for([2, 4, 6, 8, 1])) == [
        "2", "4", "7", "9", "3"]  # fmt: skip  # two of five fit: not enough
    assert values_from_heights([None, "5"], bars_for([1, 5])) == [None, "5"]
    assert values_from_heights([], []) == []


def test_where_few_readings_agree_the_y_axis_labels_pick_the_scale():
    bars, read = bars_for([2, 4, 6, 8, 1]), ["2", "4", "7", "9", "3"]  # two of five fit one scale
    unit = 0.5 / 8  # bars_for's: the tallest bar half the image high, baseline at 0.9

    def axis(labels):
        return [(value, 0.9 - drawn * unit) for value, drawn in zip(labels, (0, 2, 4, 6, 8), strict=True)]

    assert values_from_heights(read, bars, axis([0, 2, 4, 6, 8])) == ["2", "4", "6", "8", "1"]
    assert values_from_heights(read, bars, axis([0, 2, 4, 7, 8])) == ["2", "4", "6", "8", "1"]  # one misread
    assert values_from_heights(read, bars, axis([0, 4, 8, 12, 16])) == read  # the axis shows another scale
    assert values_from_heights(read, bars, axis([0, 2.2, 4.4, 6.6, 8.8])) == read  # 10% off: too far
    assert values_from_heights(read, bars, [(0, 0.9)]) == read  # no label but the 0
    # two groups of two fit two scales: the axis' one is taken
    assert values_from_heights(["2", "4", "9", "12"], bars_for([2, 4, 6, 8]), axis([0, 2, 4, 6, 8])) == [
        "2", "4", "6", "8"]  # fmt: skip


def test_values_checked_against_the_bars_drawn_by_matplotlib():
    values = [4625, 3828, 4841, 2442, 4363]
    bars = find_bars(draw(values))
    assert values_from_heights([str(v) for v in values], bars) == [str(v) for v in values]  # right ones stay
    assert values_from_heights(["4625", "3828", "4541", "2442", "4863"], bars) == [str(v) for v in values]
    small = [0.38, 0.63, 0.45, 0.79, 0.69, 0.65]
    read = ["0.38", "0.68", "0.45", "0.79", "0.69", "0.05"]
    assert values_from_heights(read, find_bars(draw(small))) == [f"{v:.2f}" for v in small]


def test_a_chart_or_page_on_a_flat_dark_background_is_read_inverted_a_photograph_is_not():
    light = draw([3, 5, 4])
    assert on_light_background(light) is light
    dark = Image.fromarray(255 - np.asarray(light))  # light text and axes on black
    assert np.array_equal(np.asarray(on_light_background(dark)), np.asarray(light))
    assert len(find_bars(on_light_background(dark))) == 3
    # dark, but its edges are no flat colour: a photograph (noise stands in for its texture)
    texture = np.random.default_rng(0).integers(0, 120, (384, 512, 3), dtype=np.uint8)
    photo = Image.fromarray(texture)
    assert on_light_background(photo) is photo
