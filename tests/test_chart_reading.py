"""Bar charts for a reading head: charts drawn with glyph boxes (charts generator, boxes=true), frame labels for
the head from them, and the layout rules that turn what the head read where into the chart's dict
(vary.infer.chart_reading)."""

from __future__ import annotations

import functools
import math
import random

import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from vary.chart_answer import parse_chart_answer
from vary.data.dataset import Conversation, line_labels_for
from vary.data.fonts import HELDOUT_FONTS
from vary.data.generators.charts import ChartGenerator, glyph_lines
from vary.data.prose import load_passages
from vary.data.sample import SkipSample
from vary.eval.metrics import chart_scores
from vary.infer.chart_bars import Bar
from vary.infer.chart_reading import (
    TextItem,
    assign_labels,
    axis_marks_dropped,
    chart_from_items,
    free_cuts,
    joined,
    line_items,
    read_chart,
    row_items,
)
from vary.modeling.conv_vocab import greedy_rows, wide_tokens
from vary.modeling.tokenizer import train_char_tokenizer
from vary.prompts import CHART_ANSWER_PREFIX

ROWS, FRAMES = 24, 96  # the bundled model's reading grid at 384 px


def bar_charts(lang: str, split: str, n: int, seed: int = 0) -> list:
    """n simple bar charts of prose text with glyph boxes, as the bundled model's chart data is drawn."""
    generator = ChartGenerator(count=n, lang=lang, size=512, kinds="bar", simple=True, font_scale=2.2,
                               text="prose", split=split, boxes=True)  # fmt: skip
    samples = []
    for i in range(seed, seed + 10 * n):
        try:
            samples.append(generator.make(i, random.Random(i)))
        except SkipSample:
            continue
        if len(samples) == n:
            return samples
    raise AssertionError(f"only {len(samples)} of {n} charts drawn")


def char_tokenizer(samples) -> object:
    texts = [text for s in samples for text, _ in s.meta["text_lines"]]
    return train_char_tokenizer(texts * 2, vocab_size=512)


def perfect_reading(sample, tok) -> list:
    """What greedy_rows reads from a head that outputs exactly its training labels."""
    conv = Conversation("k", sample.image, [("", sample.target)], sample.kind, sample.meta)
    labels = line_labels_for(conv, tok, ROWS, FRAMES)
    logits = torch.nn.functional.one_hot(labels, len(tok)).float()[None] * 10
    return greedy_rows(logits, tok.pad_token_id, wide_tokens(tok, len(tok)))[0]


def test_glyph_boxes_cover_every_text_the_chart_draws(packages):
    (sample,) = bar_charts("en", "heldout", 1)
    lines = sample.meta["text_lines"]
    drawn = [text for text, _ in lines]
    answer = parse_chart_answer(sample.target)
    assert set(answer["data"]) <= set(drawn)  # every bar's label, once each
    assert all(any(str(v) == t or f"{v:.2f}" == t or f"{v:.1f}" == t for t in drawn) for v in answer["data"].values())
    assert " ".join(answer["title"].split()) in " ".join(drawn)
    width, height = sample.image.size
    for text, boxes in lines:
        assert len(boxes) == len(text)
        lefts = [b[0] for b in boxes]
        assert lefts == sorted(lefts) and all(b[0] <= b[2] and b[1] < b[3] for b in boxes)
        assert all(b[0] >= -1 and b[2] <= width + 1 and b[1] >= -1 and b[3] <= height + 1 for b in boxes)
    # held-out text and a held-out face (matplotlib names DejaVu Sans Condensed DejaVu Sans: only Liberation Serif)
    assert sample.meta["font"] == "Liberation Serif" and "LiberationSerif" in HELDOUT_FONTS["en"]
    passages = " ".join(load_passages("en", "heldout"))
    assert all(word in passages for word in answer["title"].split())


def test_rotated_text_has_no_upright_glyph_boxes():
    fig = Figure(figsize=(2, 2), dpi=100)
    FigureCanvasAgg(fig)
    fig.text(0.1, 0.5, "upright")
    fig.canvas.draw()
    ((text, boxes),) = glyph_lines(fig)
    assert text == "upright" and len(boxes) == 7 and boxes[0][0] < boxes[-1][0]
    fig.text(0.1, 0.2, "tilted", rotation=30)
    assert glyph_lines(fig) is None
    with pytest.raises(ValueError, match="split must be"):
        ChartGenerator(count=1, split="test")


def test_labels_side_by_side_in_one_band_are_all_read(packages):
    (sample,) = bar_charts("en", "train", 1, seed=3)
    tok = char_tokenizer([sample])
    rows = perfect_reading(sample, tok)
    read = " ".join(tok.decode(ids) for _, ids, _, _ in rows)
    labels = parse_chart_answer(sample.target)["data"]
    assert all(label.replace(" ", "") in read.replace(" ", "") for label in labels)  # one band, every label


def test_two_small_cjk_glyphs_side_by_side_keep_a_blank_frame_apart():
    tok = train_char_tokenizer(["月光明"] * 3, vocab_size=64)
    # glyphs 10 px wide at 4 px frames: their middle halves would touch; a blank frame is kept between them
    boxes = [[40.0, 10.0, 50.0, 22.0], [50.0, 10.0, 60.0, 22.0], [60.0, 10.0, 70.0, 22.0]]
    conv = Conversation(
        "k", Image.new("RGB", (128, 64), "white"), [("", "x")], "charts", {"text_lines": [["月光明", boxes]]}
    )
    labels = line_labels_for(conv, tok, 4, 32)
    row = labels[0].tolist()
    frames = [i for i, t in enumerate(row) if t != tok.pad_token_id]
    assert all(b - a >= 2 for a, b in zip(frames, frames[1:], strict=False) if row[a] != row[b])
    rows = greedy_rows(torch.nn.functional.one_hot(labels, len(tok)).float()[None], tok.pad_token_id,
                       wide_tokens(tok, len(tok)))[0]  # fmt: skip
    assert tok.decode(rows[0][1]).replace(" ", "") == "月光明"


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_perfect_head_gives_back_the_dict_the_chart_was_drawn_from(packages, lang):
    samples = bar_charts(lang, "train", 6, seed=10)
    tok = char_tokenizer(samples)
    decode = functools.partial(tok.decode, skip_special_tokens=True)
    scores = [chart_scores(read_chart(perfect_reading(s, tok), decode), s.target) for s in samples]
    assert all(score["chart_parses"] == 1.0 for score in scores)
    # the rules' ceiling, measured on 138 + 160 held-out charts: 98% (en) / 96% (zh) of the values
    assert sum(score["chart_value_accuracy"] for score in scores) / len(scores) >= 0.8


def test_a_number_read_with_a_space_or_a_letter_for_a_digit_is_still_a_number():
    def item(text):
        return TextItem((0, 0), [0.0], [0], 0.9, text)

    assert [item(t).number for t in ("42", "-3.5", "1 715", "1l.88", "O.5", "68. 46")] == [
        "42", "-3.5", "1715", "11.88", "0.5", "68.46"]  # fmt: skip
    assert not any(item(t).numeric for t in ("Io", "lOl", "13.", "1 In", "0. ", "Sales 2"))


def test_layout_rules_on_a_hand_made_reading():
    tok = train_char_tokenizer(["Sales 0123456789 Green tea Coffee ─"] * 3, vocab_size=64)
    decode = functools.partial(tok.decode, skip_special_tokens=True)

    def row(r, text, frames):
        ids = tok.encode(text, add_special_tokens=False)
        return (r, ids, 0.9, frames)

    def spaced(first, n, step=3):
        return [first + step * i for i in range(n)]

    # two bars centred at frames 22 and 48; the y axis' labels end at frame 8
    rows = [
        row(1, "Sales", spaced(30, 5)),
        row(4, "100", [4, 6, 8]), row(4, "97", [47, 49]),  # a y-axis label, and the value over the second bar
        row(11, "50", [6, 8]), row(11, "42", [21, 23]),
        row(12, "42", [21, 23]),  # the value read again by the next row: one piece
        row(19, "0", [8]),
        # the last y-axis label read with the first bar's label, which touches the second's: one piece
        row(21, "0Green teaCoffee", [8] + spaced(10, 9) + spaced(40, 6)),
    ]  # fmt: skip
    items = row_items(rows, decode)
    assert [i.text for i in items if i.text == "42"] == ["42"] and len(items) == 7
    chart = chart_from_items(items, decode)
    assert chart == {"title": "Sales", "data": {"Green tea": 42, "Coffee": 97}}
    answer = read_chart(rows, decode)
    assert answer.startswith(CHART_ANSWER_PREFIX) and parse_chart_answer(answer) == chart
    # the labels apart, on neighbouring rows (one has descenders, the other not)
    apart = [*rows[:-1], row(21, "Green tea", spaced(10, 9)), row(22, "Coffee", spaced(43, 6, step=2))]
    assert chart_from_items(row_items(apart, decode), decode)["data"] == {"Green tea": 42, "Coffee": 97}
    # a row reads a line in two pieces (a gap before "Coffee"), the next row surer and in one: one piece stays
    pieces = [row(21, "Green tea", spaced(10, 9, step=2)), row(21, "Coffee", spaced(40, 6, step=2))]
    pieces = [(*p[:2], 0.6, p[3]) for p in pieces]
    whole = row(22, "Green teaCoffee", spaced(10, 9, step=2) + spaced(30, 6, step=2))  # 0.9
    assert [(i.text, i.rows) for i in row_items([*pieces, whole], decode)] == [("Green teaCoffee", (21, 22))]
    less_sure = (*whole[:2], 0.5, whole[3])  # the pieces are surer: both stay
    assert [i.text for i in row_items([*pieces, less_sure], decode)] == ["Green tea", "Coffee"]
    # a row that read the line's start with the surer row above, then a sliver of its end past a gap: the
    # sliver is the same text, not a piece of its own
    sure, start = row(21, "Green tea", spaced(10, 9, step=2)), row(22, "Gre", [10, 12, 14])
    sliver = row(22, "ea", [24, 26])
    start, sliver = (*start[:2], 0.6, start[3]), (*sliver[:2], 0.6, sliver[3])
    assert [(i.text, i.rows) for i in row_items([sure, start, sliver], decode)] == [("Green tea", (21, 22))]
    past = (*sliver[:3], [32, 34])  # past the line's end: a piece of its own
    assert [i.text for i in row_items([sure, start, past], decode)] == ["Green tea", "ea"]
    # the axis read as "─" beside a label: dropped, so the row that saw the label's top and the axis is still
    # the same line as the surer one that read the label
    top = (30, tok.encode("an─", add_special_tokens=False), 0.6, [60, 62.4, 64.8])
    assert [i.text for i in row_items([top, row(31, "Can", [58, 59.8, 61.6])], decode)] == ["Can"]
    assert axis_marks_dropped(list("─A──b1─")) == [1, 4, 5, 6]  # beside Latin letters only, not digits
    assert axis_marks_dropped(list("春──风")) == [0, 1, 2, 3]  # Chinese prose's dash, a lone one, a misread digit
    assert axis_marks_dropped(["─"]) == [0] and axis_marks_dropped(list("2─")) == [0, 1]
    assert chart_from_items([], decode) == {"title": "", "data": {}}
    assert chart_from_items(row_items([row(1, "Sales", spaced(30, 5))], decode), decode) == {"title": "", "data": {}}


def test_labels_are_cut_after_a_space_read_or_where_a_capital_follows_a_lowercase_letter():
    # "Declared This same" under two bars, a glyph every 2 frames: by the centres alone (8.5 and 29) the cut
    # after "Declared T" fits best; the space read between the two labels is a free cut and wins, and so is
    # "d" before "T" where the two labels touch
    text = "Declared This same"
    chars = [(2.0 * k, ord(c), False) for k, c in enumerate(text)]

    def labels(chars):
        return ["".join(map(chr, run)).strip() for run in assign_labels(chars, [8.5, 29.0])]

    assert labels(chars) == ["Declared T", "his same"]
    free = [(frame, c, free) for (frame, c, _), free in zip(chars, free_cuts(list(text)), strict=True)]
    assert labels(free) == ["Declared", "This same"]
    touching = [(2.0 * k, ord(c), False) for k, c in enumerate("DeclaredThis same")]  # no space read
    assert ["".join(map(chr, run)) for run in assign_labels(touching, [7.5, 26.0])] != ["Declared", "This same"]
    touching = [(f, c, free) for (f, c, _), free in zip(touching, free_cuts(list("DeclaredThis same")), strict=True)]
    assert [chr(c) for _, c, free in touching if free] == ["d", " "]  # a lowercase letter before a capital, a space
    assert ["".join(map(chr, run)) for run in assign_labels(touching, [7.5, 26.0])] == ["Declared", "This same"]


def test_labels_and_values_read_again_replace_the_whole_readings():
    tok = train_char_tokenizer(["Sales 0123456789 Green tea Coffee lix"] * 3, vocab_size=64)
    decode = functools.partial(tok.decode, skip_special_tokens=True)

    def row(r, text, frames, conf=0.9):
        return (r, tok.encode(text, add_special_tokens=False), conf, frames)

    def spaced(first, n, step=3):
        return [first + step * i for i in range(n)]

    # read at twice the trained size: frames and rows doubled; the labels and a value misread by the whole reading
    rows = [
        row(2, "Sa1es", spaced(60, 5, 6)),
        row(8, "100", [8, 12, 16]), row(8, "97", [94, 98]),
        row(22, "50", [12, 16]), row(22, "427", [40, 44, 48]),
        row(38, "0", [16]),
        row(42, "Grxn tcaCoffoe", spaced(20, 8, 6) + spaced(80, 6, 6)),
    ]  # fmt: skip
    assert parse_chart_answer(read_chart(rows, decode, scale=2))["data"] == {"Grxn ta": 427, "Coffoe": 97}
    calls = []

    def read_region(left, right, top, bottom, scale):
        calls.append((left, right, top, bottom, scale))
        if top < 5:  # the title, read at 0.625 x 3
            return [row(0, "Sales", [12, 15, 18, 21, 24])], 1.875, 20
        if right == math.inf:  # the labels' line at 3x, frame 0 at frame -2: slivers of the lines above and
            # below read as stray letters; the axis' 0 is not a label
            return [row(0, "li", [60, 63], 0.4), row(1, "0", [30]), row(1, "Green tea", spaced(42, 9, 4.5)),
                    row(2, "Coffee", spaced(132, 6, 4.5)), row(5, "lix", [186, 189, 192], 0.3)], 3.0, -2.0  # fmt: skip
        if left < 30:  # the first value: one number
            return [row(1, "42", [9, 13])], 3.0, left - 1
        return [row(1, "9", [6]), row(1, "7", [40])], 3.0, left - 1  # two numbers: the whole reading's stays

    assert parse_chart_answer(read_chart(rows, decode, scale=2))["title"] == "Sa1es"
    answer = read_chart(rows, decode, scale=2, read_region=read_region, reread_scale=3.0, reread_zooms=(1.0,))
    assert parse_chart_answer(answer) == {"title": "Sales", "data": {"Green tea": 42, "Coffee": 97}}
    # the title's and the labels' rows across the width, each value's frames, half a row of the reading either
    # side; the title at TITLE_ZOOM times the labels' scale
    assert calls == [
        (0, math.inf, (2 - 0.5) / 2, (2 + 1.5) / 2, 1.875),
        (0, math.inf, (42 - 0.5) / 2, (42 + 1.5) / 2, 3.0),
        (20 - 3, 24 + 5, (22 - 0.5) / 2, (22 + 1.5) / 2, 3.0),
        (47 - 3, 49 + 5, (8 - 0.5) / 2, (8 + 1.5) / 2, 3.0),
    ]
    band, band_scale, start = read_region(0, math.inf, 10, 11, 3.0)
    labels = line_items(band, decode, band_scale, start)
    assert sorted(i.text for i in labels) == ["0", "Coffee", "Green tea"] and labels[0].left == -2 + 42 / 3
    # a second reading that finds nothing keeps the whole reading's
    nothing = read_chart(rows, decode, scale=2, read_region=lambda *box: ([], 3.0, 0.0))
    assert parse_chart_answer(nothing) == {"title": "Sa1es", "data": {"Grxn ta": 427, "Coffoe": 97}}


def test_bars_from_the_pixels_place_values_and_cut_labels():
    tok = train_char_tokenizer(["Sales 0123456789 Green tea Coffee Milk"] * 3, vocab_size=64)
    decode = functools.partial(tok.decode, skip_special_tokens=True)

    def row(r, text, frames):
        return (r, tok.encode(text, add_special_tokens=False), 0.9, frames)

    def spaced(first, n, step=2):
        return [first + step * i for i in range(n)]

    # three bars centred at frames 20, 40 and 60, standing on row 20; the second's value was not read, the
    # third's was read with a stray number beside it, and the labels touch
    rows = [
        row(1, "Sales", spaced(34, 5)),
        row(4, "100", [4, 6, 8]), row(4, "97", [59, 61]), row(4, "3", [75]),
        row(11, "50", [6, 8]), row(10, "42", [19, 21]),
        row(19, "0", [8]),
        row(21, "Green teaCoffeeMilk", spaced(12, 9) + spaced(34, 6) + spaced(55, 4)),
    ]  # fmt: skip
    bars = [Bar(16, 24, 11, 20), Bar(36, 44, 6, 20), Bar(56, 64, 5, 20)]
    # without the bars: one bar per value read, the stray 3 among them
    assert len(parse_chart_answer(read_chart(rows, decode))["data"]) == 3
    calls = []

    def read_region(left, right, top, bottom, scale):
        calls.append((left, right, top, bottom))
        if right == math.inf:
            return [], scale, 0.0  # the title and labels' line: nothing better
        if 32 < left < 40:  # the strip over the second bar: its value
            return [row(1, "68", [12, 16])], 2.0, left - 1
        return [], 2.0, left - 1

    answer = read_chart(rows, decode, read_region=read_region, reread_scale=2.0, bars=bars, reread_zooms=(1.0,))
    assert parse_chart_answer(answer)["data"] == {"Green tea": 42, "Coffee": 68, "Milk": 97}
    # the second bar's strip: as wide as VALUE_HALF_WIDTH either side of its centre, two rows over its top
    assert (40 - 6, 40 + 6, (4 - 0.5), (5 + 1.5)) in calls
    # a value not found again leaves its bar out (its label stays cut at the bar)
    nothing = read_chart(rows, decode, read_region=lambda *box: ([], 2.0, 0.0), bars=bars)
    assert parse_chart_answer(nothing)["data"] == {"Green tea": 42, "Milk": 97}
    # a bar hanging below the baseline: its value is read under it
    down = [Bar(16, 24, 11, 20), Bar(36, 44, 20, 26, downward=True), Bar(56, 64, 5, 20)]
    read_chart(rows, decode, read_region=read_region, reread_scale=2.0, bars=down, reread_zooms=(1.0,))
    assert (40 - 6, 40 + 6, (26 - 0.5), (28 + 1.5)) in calls


def test_each_part_read_again_at_several_sizes_keeps_the_surest_reading():
    tok = train_char_tokenizer(["Sales 0123456789 Green tea Coffee Grxn"] * 3, vocab_size=64)
    decode = functools.partial(tok.decode, skip_special_tokens=True)

    def row(r, text, frames, conf=0.9):
        return (r, tok.encode(text, add_special_tokens=False), conf, frames)

    rows = [row(1, "Sales", [30, 33, 36, 39, 42]), row(4, "100", [4, 6, 8]), row(4, "97", [47, 49]),
            row(11, "50", [6, 8]), row(11, "42", [21, 23]), row(19, "0", [8]),
            row(21, "Green teaCoffee", [10 + 3 * i for i in range(9)] + [40 + 3 * i for i in range(6)])]  # fmt: skip
    scales = []

    def read_region(left, right, top, bottom, scale):
        scales.append(scale)
        if right != math.inf:
            return [], scale, 0.0
        # the labels' line: surest at 2.5 (a misreading there would win only by confidence)
        first, text, conf = (9, "Green teaCoffee", 0.95) if scale == 2.5 else (8, "Grxn teaCoffee", 0.6)
        frames = [(10 + 3 * i) * scale for i in range(first)] + [(40 + 3 * i) * scale for i in range(6)]
        return [row(1, text, frames, conf)], scale, 0.0

    answer = read_chart(rows, decode, read_region=read_region, reread_scale=2.0, reread_zooms=(0.875, 1.0, 1.25))
    assert scales[:3] == [2.0 * 0.625 * k for k in (0.875, 1.0, 1.25)]  # the title, at each size
    assert scales[3:6] == [1.75, 2.0, 2.5] and len(scales) == 3 + 3 + 2 * 3  # labels, then each value
    assert list(parse_chart_answer(answer)["data"]) == ["Green tea", "Coffee"]


def cjk_chart_reading(zero: tuple[int, str, list[float]]) -> tuple[list, functools.partial]:
    """A hand-made reading of a Chinese chart ("销量": 绿茶 42, 咖啡 97; the y axis' labels end at frame 8) whose
    axis' 0 was read as `zero` (row, text, frames), and its decode."""
    tok = train_char_tokenizer(["销量 0123456789 绿茶 咖啡 o."] * 3, vocab_size=64)

    def row(r, text, frames):
        return (r, tok.encode(text, add_special_tokens=False), 0.9, frames)

    rows = [row(1, "销量", [30, 36]), row(4, "100", [4, 6, 8]), row(4, "97", [47, 49]), row(11, "50", [6, 8]),
            row(11, "42", [21, 23]), row(*zero), row(21, "绿茶", [18, 24]), row(21, "咖啡", [44, 50])]  # fmt: skip
    return rows, functools.partial(tok.decode, skip_special_tokens=True)


def test_cjk_labels_are_not_read_again():
    # a CJK glyph is about twice a Latin letter's x-height: the whole reading's type size reads it well
    rows, decode = cjk_chart_reading((19, "0", [8]))
    calls = []
    answer = read_chart(rows, decode, read_region=lambda *box: calls.append(box) or ([], 2.0, 0.0), reread_zooms=(1.0,))
    assert parse_chart_answer(answer)["data"] == {"绿茶": 42, "咖啡": 97}
    assert len(calls) == 3 and [box[1] for box in calls].count(math.inf) == 1  # the title and the two values


def test_a_glyph_read_by_two_rows_a_frame_apart_is_one_piece():
    # a piece spans its characters' start frames, so one glyph spans none: two rows reading it start it a frame
    # or two apart, and without slack both were kept ("日日" for the label 日)
    tok = train_char_tokenizer(["日月 0123456789"] * 3, vocab_size=64)
    decode = functools.partial(tok.decode, skip_special_tokens=True)
    first = (20, tok.encode("日", add_special_tokens=False), 0.6, [30.0])
    again = (21, first[1], 0.9, [31.2])
    assert [(i.text, i.rows, i.conf) for i in row_items([first, again], decode)] == [("日", (20, 21), 0.9)]
    # two glyphs a wide glyph apart on neighbouring rows stay two pieces
    other = (21, tok.encode("月", add_special_tokens=False), 0.9, [38.0])
    assert [i.text for i in row_items([first, other], decode)] == ["日", "月"]


def test_a_line_s_pieces_join_without_a_space_between_cjk_glyphs():
    assert joined(["飞", "鸿过", "也"]) == "飞鸿过也"
    assert joined(["Sales", "by", "year"]) == "Sales by year"
    assert joined(["销量", "2024", "年"]) == "销量 2024 年"  # a space where Latin text meets CJK, as read
    assert joined(["───", "重，", "碧", "─ ──"]) == "重，碧"  # an axis or frame line read as box drawing: not text
    assert joined(["春──风"]) == "春──风"  # Chinese prose's dash inside a piece stays
    assert joined([]) == ""


def test_a_tick_of_the_y_axis_read_as_letters_is_not_a_label():
    # the axis' 0 at the baseline read "o.o", a piece of its own left of the axis' edge
    rows, decode = cjk_chart_reading((20, "o.o", [4, 6, 8]))
    chart = chart_from_items(row_items(rows, decode), decode)
    assert chart == {"title": "销量", "data": {"绿茶": 42, "咖啡": 97}}
