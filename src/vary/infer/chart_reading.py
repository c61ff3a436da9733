"""Bar charts read with a reading head: where each piece of text stands -> the chart's python dict.

A reading-head model (config.ocr_reader "reading_head", vary.modeling.conv_vocab) names the character under
every 4 px frame of every 16 px grid row, so it knows where it read each piece of text. A bar chart's dict
follows from where: the number printed over each bar is its value, the label under the same bar its key, the
top line the title, and the numbers stacked at the left the y axis. No maintained library turns positioned
OCR into a chart's data, so these layout rules are written here. They cover what the bundled model is trained
on (vary.data.generators.charts with simple=true, kinds=bar): vertical bars of one series, every value printed.
A chart of another kind gets whatever those rules find, often an empty 'data'. The labels and values, the
chart's smallest type, can be read a second time, each on its own and larger (read_chart's read_region).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from vary.infer.chart_bars import Bar, values_from_heights
from vary.modeling.conv_vocab import same_line, wide_glyph
from vary.prompts import CHART_ANSWER_PREFIX

# (left, right, top, bottom in frames and grid rows of the trained size, scale) -> (rows, scale, start): read_chart
ReadRegion = Callable[[float, float, float, float, float], tuple[list[tuple], float, float]]
# (left, right, first row, last row of the reading, zoom) -> the pieces of the line there, read again
Reread = Callable[[float, float, int, int, float], list["TextItem"]]
# The title is read again at this times the labels' size: its type is larger (matplotlib's title is "large"
# against the ticks' "medium"). Dev set (16 English charts, labels at 2.0): title ED 0.43 in the whole reading,
# read alone at 1.25 0.17, at 1.5 0.25, at 2.0 0.65.
TITLE_ZOOM = 0.625
# Each part is read again at these times its size, and the reading the head is surest of (mean_confidence) is
# kept: which size a label reads best at depends on its face and letters. Dev set (C7, 52 English / 64 Chinese
# charts, labels at 2.0): one size 0.542 / 0.198; 1.0 and 1.25 0.622 / 0.202; these three 0.638 / 0.216; 0.875
# to 1.25 in four steps 0.642 / 0.222; 0.75 to 1.5 in five 0.608 / 0.208.
REREAD_ZOOMS = (0.875, 1.0, 1.25)
NUMBER = re.compile(r"-?\d+(\.\d+)?")
# Dev set (C7, 64 Chinese charts): a value read with a space inside or a letter for a digit was lost; reading it
# so took Chinese value accuracy from 0.216 to 0.229 (English unchanged).
DIGIT_LOOKALIKES = str.maketrans("lIOo", "1100")
# A new piece of text starts where the next character is this many frames (4 px at 384 px) past the last one
# started: wider than a wide (CJK) glyph at the trained sizes, narrower than the gap between two bars' labels.
ITEM_GAP = 7
BOX_DRAWING = re.compile(r"[\u2500-\u257f]")  # the axes' lines as the head reads them: see axis_marks_dropped
TICK_ALIGN = 2  # frames: the right edges of the y axis' labels agree within this
# frames: a piece's extent is its characters' start frames, so one glyph spans none; two rows reading the same
# glyph start it a frame or two apart. Pieces are the same place when they overlap within this (about a wide
# glyph's half). Dev set (C7): with 0, a CJK label or title glyph read by two rows was kept twice ("日日", "不怕路长
# 长"); 1 / 2 / 3 / 4 / 6: chart values 0.305 -> 0.316 (Chinese), 0.820 -> 0.829 (English) for each; Chinese
# title ED 0.44 -> 0.37 / 0.34 / 0.33 / 0.33 / 0.33.
GLYPH_SLACK = 3
CUT_COST = 3.0  # frames: what cutting the labels' line where the reading saw no gap costs (assign_labels)
VALUE_REACH = 2  # frames: a value read this far past either side of a bar is still that bar's
VALUE_HALF_WIDTH = 6  # frames: half the width read again for a bar's missing value (wider than most numbers)


@dataclass
class TextItem:
    """A piece of text the head read: its grid rows, the frames its characters start at, ids and text."""

    rows: tuple[int, int]
    frames: list[float]
    ids: list[int]
    conf: float
    text: str = ""

    @property
    def reading(self) -> tuple:
        """As conv_vocab.same_line compares readings: (row, ids, confidence)."""
        return (self.rows[0], self.ids, self.conf)

    @property
    def left(self) -> float:
        return self.frames[0]

    @property
    def right(self) -> float:
        return self.frames[-1]

    @property
    def centre(self) -> float:
        return (self.left + self.right) / 2

    @property
    def number(self) -> str | None:
        """The number this piece reads as, or None. Spaces inside it are dropped and letters the head takes for
        digits (l, I for 1; O, o for 0) read as those digits when the rest is a number: "1 715", "1l.88"."""
        if NUMBER.fullmatch(self.text):
            return self.text
        if not any(c.isdigit() for c in self.text):
            return None
        text = self.text.replace(" ", "").translate(DIGIT_LOOKALIKES)
        return text if NUMBER.fullmatch(text) else None

    @property
    def numeric(self) -> bool:
        return self.number is not None


def row_items(rows: list[tuple], decode: Callable[[list[int]], str], row_gap: int = 1) -> list[TextItem]:
    """Cut every row that conv_vocab.greedy_rows read, (row, ids, confidence, start frames), into pieces of text
    at gaps of more than ITEM_GAP frames, and merge a piece with the one a row up to `row_gap` rows above read
    at the same place (the more confident reading stays): a line is read by each of the one to three rows its
    glyphs cover, and a row that sees only the top or bottom of the glyphs reads other letters. Two pieces at the
    same place are kept apart only when one is a number and the other not (a short bar's value over its label)
    and they read different text (conv_vocab.same_line). A surer reading of a whole line also replaces the other
    pieces of it that a row above read apart (its last word past a gap read twice: "NamespaceNamespace")."""
    items: list[TextItem] = []
    for row, ids, conf, frames in rows:
        kept = axis_marks_dropped([decode([token]) for token in ids])
        ids, frames = [ids[k] for k in kept], [frames[k] for k in kept]
        start = 0
        for i in range(1, len(ids) + 1):
            if i == len(ids) or frames[i] - frames[i - 1] > ITEM_GAP:
                piece = ids[start:i]
                text = decode(piece).strip()
                if text:
                    items.append(TextItem((row, row), frames[start:i], piece, conf, text))
                start = i
    merged: list[TextItem] = []
    for item in items:  # rows in order, so a line's earlier readings are already in `merged`
        if any(_read_within(item, other) for other in merged):
            continue
        same = [other for other in merged if _read_again(item, other, row_gap)]
        if not same:
            merged.append(item)
            continue
        other = same[0]
        best = item if item.conf > other.conf else other
        other.frames, other.ids, other.conf, other.text = best.frames, best.ids, best.conf, best.text
        other.rows = (other.rows[0], item.rows[1])
        if best is item:  # the surer reading of a whole line replaces every piece of it a row above read apart
            drop = [piece for piece in same[1:] if piece.conf < item.conf]
            merged = [piece for piece in merged if not any(piece is gone for gone in drop)]
    return merged


def axis_marks_dropped(chars: list[str]) -> list[int]:
    """The positions of a row's characters to keep: all but the runs of box-drawing ones ("─") that touch a
    Latin letter. The head reads the axes' lines and ticks so beside the labels and values they touch; dropped,
    a row that saw a label's top and the axis ("an─") is still the same line as the one that read it ("Can").
    Chinese prose writes its dash with them ("──"), so those beside CJK text, digits (a misread CJK label) or
    alone stay. Dev chart values: 0.758 -> 0.778 English, Chinese 0.229 either way (0.225 when all were dropped)."""

    def latin(k: int) -> bool:
        return 0 <= k < len(chars) and chars[k].isascii() and chars[k].isalpha()

    keep, k = [], 0
    while k < len(chars):
        end = k
        while end < len(chars) and BOX_DRAWING.fullmatch(chars[end]):
            end += 1
        if end == k:
            keep.append(k)
            k += 1
            continue
        if not (latin(k - 1) or latin(end)):  # the run [k, end) touches no Latin letter
            keep += range(k, end)
        k = end
    return keep


def _read_again(item: TextItem, other: TextItem, row_gap: int) -> bool:
    """Whether `item` reads again what `other`, a piece up to `row_gap` rows above it, read (row_items)."""
    above = 0 < item.rows[0] - other.rows[1] <= row_gap
    overlap = other.left <= item.right + GLYPH_SLACK and item.left <= other.right + GLYPH_SLACK
    shared = min(other.right, item.right) - max(other.left, item.left)  # frames both span
    half = min(other.right - other.left, item.right - item.left) / 2
    same_place = shared >= half and other.numeric == item.numeric
    return above and overlap and (same_place or same_line(item.reading, other.reading))


def _read_within(item: TextItem, other: TextItem) -> bool:
    """Whether `item` is a sliver of `other`, a surer piece its row already read more of: in the rows `other`
    spans and within its frames ("et" under "Element", the row that read most of the line reading its end
    again past a gap; row_items)."""
    inside = other.rows[0] <= item.rows[0] <= other.rows[1] and other.left <= item.left <= item.right <= other.right
    return inside and item.conf < other.conf and item.numeric == other.numeric


def y_axis_labels(items: list[TextItem]) -> tuple[list[TextItem], float | None]:
    """The numbers stacked at the left of the plot and the frame their right edges share: the largest set (two
    or more) of numbers on different rows whose right edges agree within TICK_ALIGN frames, and any number
    ending left of them. Values printed over bars never line up so: each sits over its own bar."""
    numbers = [item for item in items if item.numeric]
    best: list[TextItem] = []
    for item in numbers:
        column = [other for other in numbers if abs(other.right - item.right) <= TICK_ALIGN]
        if len({other.rows for other in column}) >= 2 and len(column) > len(best):
            best = column
    if not best:
        return [], None
    edge = max(item.right for item in best)
    return [item for item in numbers if item.right <= edge + TICK_ALIGN], edge


def split_tick(item: TextItem, edge: float, decode: Callable[[list[int]], str]) -> tuple[TextItem, TextItem] | None:
    """A y-axis number read as one piece with the text beside it, cut at the axis' edge into (number, rest);
    None when `item` is no such piece. The cut is the last one within TICK_ALIGN frames of the edge that leaves
    a number on its left."""
    for cut in range(sum(f <= edge + TICK_ALIGN for f in item.frames), 0, -1):
        if item.frames[cut - 1] < edge - TICK_ALIGN or cut == len(item.ids):
            break
        left, right = decode(item.ids[:cut]).strip(), decode(item.ids[cut:]).strip()
        if NUMBER.fullmatch(left) and right:
            return (TextItem(item.rows, item.frames[:cut], item.ids[:cut], item.conf, left),
                    TextItem(item.rows, item.frames[cut:], item.ids[cut:], item.conf, right))  # fmt: skip
    return None


def free_cuts(chars: list[str]) -> list[bool]:
    """Per character of a labels' line, whether the line may be cut after it for free (assign_labels): after a
    space read, and after a lowercase letter that a capital follows (two labels that touch: "Method inSpawn*()")."""
    return [
        not c.strip() or (c.islower() and after.isupper()) for c, after in zip(chars, chars[1:] + [""], strict=True)
    ]


def assign_labels(chars: list[tuple[float, int, bool]], centres: list[float]) -> list[list[int]]:
    """Cut the labels' line, characters (frame, id, a free cut follows) left to right, into one run per bar:
    each label is centred under its bar, so the cuts minimise the distance of every run's middle to its bar's
    centre (dynamic programming over the cut points). A cut where the caller marks it free costs nothing (dev
    English chart values: 0.714 -> 0.727 after a space read; 0.771 -> 0.778 after a lowercase letter before a
    capital, with the other rules of this module), one between two characters CUT_COST frames less their
    distance, a bar left without a label half the bars' spacing. Labels wider than their bar touch their
    neighbours, so the gaps alone do not say where one ends."""
    n, k = len(chars), len(centres)
    spacing = (centres[-1] - centres[0]) / (k - 1) if k > 1 else 8.0
    empty = spacing / 2
    inf = float("inf")
    cost = [[inf] * (n + 1) for _ in range(k + 1)]  # cost[b][j]: bars < b hold characters < j
    back = [[0] * (n + 1) for _ in range(k + 1)]
    cost[0][0] = 0.0
    for b in range(k):
        for j in range(n + 1):
            # a wider space between two characters is likelier the space between two labels
            cut = 0.0 if j in (0, n) or chars[j - 1][2] else max(0.0, CUT_COST + 1 - (chars[j][0] - chars[j - 1][0]))
            for i in range(j + 1):
                if cost[b][i] == inf:
                    continue
                step = empty if i == j else abs((chars[i][0] + chars[j - 1][0]) / 2 - centres[b]) + cut
                if cost[b][i] + step < cost[b + 1][j]:
                    cost[b + 1][j], back[b + 1][j] = cost[b][i] + step, i
    runs, j = [], n
    for b in range(k, 0, -1):
        i = back[b][j]
        runs.append([token for _, token, _ in chars[i:j]])
        j = i
    return runs[::-1]


def chart_from_items(items: list[TextItem], decode: Callable[[list[int]], str], joiner: str = " ",
                     row_gap: int = 1, reread: Reread | None = None, bars: list[Bar] | None = None) -> dict:  # fmt: skip
    """{'title': ..., 'data': {label: value}} of a vertical bar chart from the pieces of text read on it.

    The lowest line of text (without the y axis' numbers) holds the bars' labels; every other number is a bar's
    value, centred over its bar; the labels' line is cut into one label per bar (assign_labels). The title is
    the text above every value (pieces of one row joined with `joiner`). `row_gap`: grid rows per 16 px of the
    trained scale (2 for an image read at twice the size). `reread(left, right, first_row, last_row, zoom)`:
    the pieces of the one line of text in that part of the image, read again on its own (read_chart); the
    title, the labels' line (unless it is CJK) and each value are taken from it where it finds them.
    `bars` (two or more; frames, and grid rows of this reading): the bars where the pixels show them
    (vary.infer.chart_bars). Then each bar's value is the number read nearest over it (bar_value), read again
    there when none was, and the labels' line is cut at the bars; without them, one bar per value read."""
    ticks, edge = y_axis_labels(items)
    rest = []
    for item in items:
        if edge is not None and item.right <= edge + TICK_ALIGN:
            continue  # the y axis' column: its numbers (`ticks`), and ticks read as letters ("o.o" for 0.0; dev
            # 0.296 -> 0.305 Chinese, English the same: else the first bar's label began with it, "o广话")
        pieces = split_tick(item, edge, decode) if edge is not None and item.left <= edge + TICK_ALIGN else None
        rest.append(pieces[1] if pieces else item)
    if not rest:
        return {"title": "", "data": {}}
    lowest = max(rest, key=lambda item: item.rows[1])
    # the labels' line: what overlaps the lowest piece's rows, and text (not a bar's value) a row above them
    # (labels with and without descenders can fall on neighbouring rows)
    in_label_row = [
        item
        for item in rest
        if item.rows[0] <= lowest.rows[1] and lowest.rows[0] - (0 if item.numeric else row_gap) <= item.rows[1]
    ]
    values = sorted(
        (item for item in rest if item.numeric and not any(item is x for x in in_label_row)),
        key=lambda item: item.centre,
    )
    top = min((item.rows[0] for item in values), default=lowest.rows[0])
    title_items = sorted((item for item in rest if item.rows[1] < top and not item.numeric), key=lambda i: i.rows)
    title = ""
    if title_items:
        first = title_items[0].rows
        line = [item for item in title_items if item.rows == first]
        if reread is not None:
            line = reread(0, math.inf, first[0], first[1], TITLE_ZOOM) or line
        title = joined([item.text for item in sorted(line, key=lambda i: i.left)], joiner)
    bars = bars if bars and len(bars) >= 2 else None
    if not values and not bars:
        return {"title": title, "data": {}}
    label_items = in_label_row
    # CJK labels stay as read: a wide glyph is about 1 em wide and tall, twice a Latin letter's x-height, so
    # the type size that leaves Latin labels too small reads CJK ones well (dev: 0.126 -> 0.098 read again)
    label_text = "".join(item.text for item in in_label_row)
    if reread is not None and 2 * sum(map(wide_glyph, label_text)) < len(label_text):
        again = reread(0, math.inf, min(item.rows[0] for item in in_label_row),
                       max(item.rows[1] for item in in_label_row), 1.0)  # fmt: skip
        labels_again = []
        for item in again:  # the axis' 0 is on the labels' line: left out, or cut off the label it was read with
            if edge is None or item.left > edge + TICK_ALIGN:
                labels_again.append(item)
            elif pieces := split_tick(item, edge, decode):
                labels_again.append(pieces[1])
            elif item.right > edge + 2 * TICK_ALIGN and not item.numeric:  # a label begun under the axis' 0
                labels_again.append(item)
        label_items = labels_again or in_label_row
    chars = []  # (frame, id, a cut may follow for free: free_cuts, and the end of a piece)
    for item in sorted(label_items, key=lambda i: i.left):
        chars += list(zip(item.frames, item.ids, free_cuts([decode([token]) for token in item.ids]), strict=True))
        chars[-1] = (*chars[-1][:2], True)
    read_alone: list[TextItem] = []  # values read on their own already (a bar's missing value)
    if bars:
        bar_values = [bar_value(bar, values, bars, reread, row_gap, read_alone) for bar in bars]
        labels = assign_labels(chars, [bar.centre for bar in bars])
    else:
        bar_values = list(values)
        labels = assign_labels(chars, [value.centre for value in values])
    if reread is not None:  # frames from 3 before the value's first character to 5 past its last one's start
        for i, value in enumerate(bar_values):
            if value is None or any(value is done for done in read_alone):
                continue
            numbers = [item for item in reread(value.left - 3, value.right + 5, *value.rows, 1.0) if item.numeric]
            if len(numbers) == 1:
                bar_values[i] = dataclasses.replace(value, ids=numbers[0].ids, text=numbers[0].text)
    numbers = [value.number if value is not None else None for value in bar_values]
    if bars:
        axis = [(float(tick.number), (tick.rows[0] + tick.rows[1] + 1) / 2) for tick in ticks]  # a line's middle
        numbers = values_from_heights(numbers, bars, axis)
    data: dict[str, int | float] = {}
    for number, ids in zip(numbers, labels, strict=True):
        if number is not None:
            data[decode(ids).strip()] = int(number) if "." not in number else float(number)
    return {"title": title, "data": data}


def bar_value(bar: Bar, values: list[TextItem], bars: list[Bar], reread: Reread | None, row_gap: int,
              read_alone: list[TextItem]) -> TextItem | None:  # fmt: skip
    """The number printed at the end of `bar` (frames, and grid rows of the reading): of the values read, the
    one centred nearest the bar's centre within its width and VALUE_REACH frames either side; where none is
    (a value missed, or merged with its neighbour's into one piece), the strip just past the bar's end (above
    it, below a downward bar) read again on its own, when it holds exactly one number (added to
    `read_alone`); else None."""
    near = [value for value in values if bar.left - VALUE_REACH <= value.centre <= bar.right + VALUE_REACH]
    if near:
        return min(near, key=lambda value: abs(value.centre - bar.centre))
    if reread is None:
        return None
    spacing = min(abs(other.centre - bar.centre) for other in bars if other is not bar)
    half = min(max(VALUE_HALF_WIDTH, (bar.right - bar.left) / 2 + VALUE_REACH), spacing / 2)
    if bar.downward:
        first, last = math.floor(bar.bottom), math.floor(bar.bottom + 2 * row_gap)
    else:
        first, last = math.floor(bar.top - 2 * row_gap), math.floor(bar.top) - 1  # row_gap >= 1: first <= last
    numbers = [item for item in reread(bar.centre - half, bar.centre + half, first, last, 1.0) if item.numeric]
    if len(numbers) != 1:
        return None
    read_alone.append(numbers[0])
    return numbers[0]


def joined(pieces: list[str], joiner: str = " ") -> str:
    """The pieces of one line of text, left to right, as one string: `joiner` between them, none between two
    wide glyphs (Chinese is written without spaces: "飞鸿过也", not "飞 鸿 过 也"); a piece of box-drawing
    characters alone is an axis or frame line the head read, not text (dev set, Chinese titles: exact 14 -> 24 of
    64, ED 0.54 -> 0.44; English ED 0.076 -> 0.071)."""
    line = ""
    for piece in pieces:
        if all(BOX_DRAWING.fullmatch(c) or not c.strip() for c in piece):
            continue
        line += ("" if not line or (wide_glyph(line[-1]) and wide_glyph(piece[0])) else joiner) + piece
    return line


def chart_answer(chart: dict) -> str:
    """CHART_ANSWER_PREFIX + the dict literal, as the charts data source writes answers (vary.chart_answer)."""
    return CHART_ANSWER_PREFIX + repr(chart)


def mean_confidence(items: list[TextItem]) -> float:
    """The head's mean confidence over the characters of a reading (0 for an empty one)."""
    n = sum(len(item.ids) for item in items)
    return sum(item.conf * len(item.ids) for item in items) / n if n else 0.0


def line_items(rows: list[tuple], decode: Callable[[list[int]], str], scale: float,
               start: float = 0.0) -> list[TextItem]:  # fmt: skip
    """The pieces of the one line of text that a part of the image was read for (rows read at `scale` times the
    trained size, their frame 0 at frame `start` of the trained size): those within a row of the line's middle,
    the mean row of every character read. A part cut around a line also shows slivers of the text above and
    below it, which read as a few stray letters."""
    items = row_items([(r, ids, conf, [start + f / scale for f in frames]) for r, ids, conf, frames in rows],
                      decode, math.ceil(scale))  # fmt: skip
    if not items:
        return []
    middle = sum((item.rows[0] + item.rows[1]) / 2 * len(item.ids) for item in items) / sum(len(i.ids) for i in items)
    return [item for item in items if item.rows[0] - 1 <= middle <= item.rows[1] + 1]


def read_chart(rows: list[tuple], decode: Callable[[list[int]], str], joiner: str = " ", scale: float = 1,
               read_region: ReadRegion | None = None, reread_scale: float = 2.0, bars: list[Bar] | None = None,
               reread_zooms: tuple[float, ...] | None = None) -> str:  # fmt: skip
    """One image's greedy_rows reading -> its chart answer (CHART_ANSWER_PREFIX + a python-dict literal).
    `scale`: how many times the trained input size the image was read at (frames and rows are `scale` times
    as many per character; the rules' constants are for scale 1).

    `read_region(left, right, top, bottom, scale)`: that part of the image (frames and grid rows of the trained
    size; `right` may be inf: to the edge) read again on its own at `scale` times the trained size, returning
    (greedy_rows' rows, the scale it was read at, the frame of the trained size where its frame 0 lies). The
    bars' labels and values are the chart's smallest type: read alone at `reread_scale` (times each of
    `reread_zooms`, REREAD_ZOOMS by default; the surest reading kept), larger than the whole chart can be read,
    they come out better; so does the title, read alone at TITLE_ZOOM times that. The y axis stays with the
    whole reading (vary.infer.pipeline passes config.chart_reread_scale).

    `bars`: the bars the pixels show (vary.infer.chart_bars.find_bars), in frames and grid rows of the trained
    size: chart_from_items then finds a value per bar and cuts the labels at them."""
    reread = None
    if read_region is not None:

        def reread(left: float, right: float, first: int, last: int, zoom: float) -> list[TextItem]:
            # rows of this reading; half a row of it either side
            top, bottom = (first - 0.5) / scale, (last + 1.5) / scale
            readings = []
            for k in reread_zooms or REREAD_ZOOMS:
                region_rows, region_scale, start = read_region(left, right, top, bottom, reread_scale * zoom * k)
                readings.append(line_items(region_rows, decode, region_scale, start))
            return max(readings, key=mean_confidence)

    if scale != 1:
        rows = [(r, ids, conf, [f / scale for f in frames]) for r, ids, conf, frames in rows]
    row_gap = math.ceil(scale)
    bars = [bar.scaled(1, scale) for bar in bars] if bars else None  # rows of this reading
    return chart_answer(chart_from_items(row_items(rows, decode, row_gap), decode, joiner, row_gap, reread, bars))
