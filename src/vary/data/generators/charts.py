"""Charts: bar, line, pie and bar+line charts drawn with matplotlib; the target is a python dict.

Vary-tiny learned charts from matplotlib and pyecharts renders whose ground truth is the chart's content
as a python dict. pyecharts needs a browser to rasterise, which an offline data engine cannot count on, so
every chart here is drawn by matplotlib's Agg renderer in two visual families:
- "matplotlib": matplotlib's own style sheets (default, ggplot, seaborn, bmh, ...);
- "echarts": ECharts' theme palettes, left-aligned bold title, legend on top, no box, light split lines,
  hollow line markers, pie labels outside with leader lines - the look of pyecharts output,
so the model does not overfit one renderer.

Target: ``CHART_ANSWER_PREFIX`` + a python-dict literal, series and keys in plotted order:
    one series:  {'title': 'T', 'data': {'x1': 3.5, 'x2': 4.0}}
    several:     {'title': 'T', 'data': {'series A': {'x1': 3.5, ...}, 'series B': {...}}}
Every value is printed on the chart with exactly the digits the target holds, and the plotted number is
that rounded value, so the image determines the target. ``vary.chart_answer.parse_chart_answer`` reads it back.
A chart whose texts would leave the canvas or whose value labels would overlap is redrawn from the
same rng (still deterministic) and skipped after a few tries.

Options for a reading head's data (all `--option key=value`, as the blocks generator's):
  text   "generator"  "prose": titles and labels cut from real prose (vary.data.prose) instead of the generator
  split  none         "train" or "heldout": the prose passages and the faces (vary.data.fonts.HELDOUT_FONTS) to
                      draw from; with text=prose it defaults to "train"
  boxes  false        true: also record meta["text_lines"], every text line drawn on the chart as
                      [text, [[left, top, right, bottom] per character]] in image pixels (the line's advance
                      split by its prefixes' widths, the line's ascent to descent). A chart with rotated text
                      is redrawn: its glyphs have no upright box.
"""

from __future__ import annotations

import itertools
import math
import random
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import matplotlib.style
from cycler import cycler
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import fontManager
from PIL import Image

from vary.data.fonts import find_fonts
from vary.data.generators import option_flag
from vary.data.prose import text_source
from vary.data.sample import Sample, SkipSample
from vary.data.text import TextCorpus
from vary.prompts import CHART_ANSWER_PREFIX

KINDS = ("bar", "barh", "line", "pie", "bar_line")
FAMILIES = ("matplotlib", "echarts")
FIG_SIDE_IN = 10.24  # longest figure side: the layout is designed at 1024 px / 100 dpi; `size` scales the dpi
# (height / width, probability): square, matplotlib's 4:3, pyecharts' wide default, portrait
ASPECTS = ((1.0, 0.35), (0.75, 0.35), (0.5625, 0.15), (4 / 3, 0.15))

# --- themes -------------------------------------------------------------------------------------------

# matplotlib style sheets that keep a light background and readable value labels.
MPL_STYLES = (
    "default",
    "ggplot",
    "bmh",
    "seaborn-v0_8-whitegrid",
    "seaborn-v0_8-darkgrid",
    "seaborn-v0_8-ticks",
    "Solarize_Light2",
    "tableau-colorblind10",
    "fivethirtyeight",
    "grayscale",
    "petroff10",
)

# ECharts theme palettes (echarts 5 default, echarts 4 default as in older pyecharts, and the bundled themes).
ECHARTS_PALETTES = {
    "default": ("#5470c6", "#91cc75", "#fac858", "#ee6666", "#73c0de", "#3ba272", "#fc8452", "#9a60b4"),
    "v4": ("#c23531", "#2f4554", "#61a0a8", "#d48265", "#91c7ae", "#749f83", "#ca8622", "#bda29a"),
    "macarons": ("#2ec7c9", "#b6a2de", "#5ab1ef", "#ffb980", "#d87a80", "#8d98b3", "#e5cf0d", "#97b552"),
    "shine": ("#c12e34", "#e6b600", "#0098d9", "#2b821d", "#005eaa", "#339ca8", "#cda819", "#32a487"),
    "vintage": ("#d87c7c", "#919e8b", "#d7ab82", "#6e7074", "#61a0a8", "#efa18d", "#787464", "#cc7e63"),
    "westeros": ("#516b91", "#59c4e6", "#edafda", "#93b7e3", "#a5e7f0", "#cbb0e3", "#516b91", "#59c4e6"),
    "wonderland": ("#4ea397", "#22c3aa", "#7bd9a5", "#d0648a", "#f58db2", "#f2b3c9", "#4ea397", "#22c3aa"),
    "walden": ("#3fb1e3", "#6be6c1", "#626c91", "#a0a7e6", "#c4ebad", "#96dee8", "#3fb1e3", "#6be6c1"),
    "essos": ("#893448", "#d95850", "#eb8146", "#ffb248", "#f2d643", "#ebdba4", "#893448", "#d95850"),
    "dark": ("#dd6b66", "#759aa0", "#e69d87", "#8dc1a9", "#ea7e53", "#eedd78", "#73a373", "#73b9bc"),
}

ECHARTS_RC = {
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.spines.left": False,
    "axes.edgecolor": "#6E7079",
    "axes.linewidth": 1.0,
    "axes.grid": True,
    "axes.grid.axis": "y",
    "axes.axisbelow": True,
    "axes.titleweight": "bold",
    "axes.titlecolor": "#464646",
    "axes.titlelocation": "left",
    "axes.titlepad": 28.0,
    "grid.color": "#E0E6F1",
    "grid.linestyle": "-",
    "grid.linewidth": 1.0,
    "xtick.color": "#6E7079",
    "ytick.color": "#6E7079",
    "ytick.major.size": 0.0,
    "legend.frameon": False,
    "text.color": "#333333",
    "lines.linewidth": 2.0,
    "lines.markersize": 7.0,
    "patch.edgecolor": "white",
}
ECHARTS_DARK_RC = {
    "figure.facecolor": "#100C2A",
    "axes.facecolor": "#100C2A",
    "axes.titlecolor": "#EEF1FA",
    "text.color": "#EEF1FA",
    "xtick.color": "#B9B8CE",
    "ytick.color": "#B9B8CE",
    "axes.edgecolor": "#B9B8CE",
    "grid.color": "#484753",
    "patch.edgecolor": "#100C2A",
}


@dataclass
class Theme:
    """A renderer look: rcParams over matplotlib's defaults plus a palette and legend placement."""

    family: str  # "matplotlib" or "echarts"
    name: str
    palette: tuple[str, ...]
    rc: dict = field(default_factory=dict)
    legend_top: bool = False  # echarts puts the legend in a row above the plot


def make_theme(family: str, rng: random.Random) -> Theme:
    if family == "matplotlib":
        name = rng.choice([s for s in MPL_STYLES if s == "default" or s in matplotlib.style.library])
        rc = {} if name == "default" else dict(matplotlib.style.library[name])
        palette = tuple(
            c["color"] for c in (rc.get("axes.prop_cycle") or matplotlib.rcParamsDefault["axes.prop_cycle"])
        )
        return Theme(family, name, palette, rc)
    name = rng.choice(sorted(ECHARTS_PALETTES))
    rc = {**ECHARTS_RC, **(ECHARTS_DARK_RC if name == "dark" else {})}
    return Theme(family, name, ECHARTS_PALETTES[name], rc, legend_top=True)


# --- fonts --------------------------------------------------------------------------------------------

_FAMILY_OF_PATH: dict[Path, str] = {}


def font_family(path: Path) -> str:
    """Register a font file with matplotlib once and return its family name (the SC face of a CJK .ttc)."""
    path = Path(path)
    if path not in _FAMILY_OF_PATH:
        names = sorted({f.name for f in fontManager.ttflist if Path(f.fname) == path})
        if not names:  # not a system font matplotlib already knows
            fontManager.addfont(str(path))
            names = sorted({f.name for f in fontManager.ttflist if Path(f.fname) == path})
        if not names:
            raise ValueError(f"matplotlib could not read font file {path}")
        simplified = [n for n in names if n.endswith(" SC")]
        _FAMILY_OF_PATH[path] = (simplified or names)[0]
    return _FAMILY_OF_PATH[path]


def chart_font_families(lang: str, split: str | None = None) -> list[str]:
    """Distinct font families usable for `lang` (`split`: see find_fonts), sorted so the choice is reproducible
    across machines."""
    paths = find_fonts(lang, style="regular", split=split)  # raises FontNotFoundError with the set-up hint
    families = sorted({font_family(p) for p in paths})
    if split == "heldout":  # matplotlib picks a face by family: DejaVu Sans Condensed would draw as DejaVu Sans
        families = [f for f in families if f not in chart_font_families(lang, "train")] or families
    return [f for f in families if "Mono" not in f] or families


# --- chart content ------------------------------------------------------------------------------------


def format_value(value: int | float, decimals: int) -> str:
    """The text printed on the chart and written in the target: identical, so they cannot disagree."""
    return str(int(value)) if decimals == 0 else f"{value:.{decimals}f}"


@dataclass
class Series:
    name: str
    values: dict[str, int | float]  # x label -> plotted (already rounded) value
    decimals: int

    def text(self, x: str) -> str:
        return format_value(self.values[x], self.decimals)


@dataclass
class Chart:
    kind: str
    title: str
    xs: list[str]
    series: list[Series]
    twin: bool = False  # bar_line: the line has its own (right) y axis

    def data(self) -> dict:
        if len(self.series) == 1:
            return dict(self.series[0].values)
        return {s.name: dict(s.values) for s in self.series}

    def answer(self) -> str:
        """CHART_ANSWER_PREFIX + the dict literal, numbers spelled exactly as printed on the chart."""

        def mapping(s: Series) -> str:
            return "{" + ", ".join(f"{x!r}: {s.text(x)}" for x in self.xs) + "}"

        if len(self.series) == 1:
            data = mapping(self.series[0])
        else:
            data = "{" + ", ".join(f"{s.name!r}: {mapping(s)}" for s in self.series) + "}"
        return CHART_ANSWER_PREFIX + "{" + f"'title': {self.title!r}, 'data': {data}" + "}"


def _clip(text: str, lang: str, max_chars: int) -> str:
    """Shorten a label to at most max_chars, at a word boundary for English."""
    text = " ".join(text.split()).strip(" ,.;:!?，。；：！？、")
    if len(text) <= max_chars:
        return text
    if lang == "zh":
        return text[:max_chars]
    return textwrap.shorten(text, max_chars, placeholder="").strip(" ,.;:") or text[:max_chars]


class _Texts:
    """Draws labels from the corpus, ensuring they are distinct (they become dict keys)."""

    def __init__(self, corpus: TextCorpus, lang: str, rng: random.Random):
        self.corpus, self.lang, self.rng = corpus, lang, rng

    def label(self, max_chars: int, n_words: int) -> str:
        words = self.corpus.words(self.rng, n_words)
        joined = ("" if self.lang == "zh" else " ").join(words if isinstance(words, list) else [words])
        text = _clip(joined, self.lang, max_chars)
        return text[:1].upper() + text[1:] if self.lang == "en" else text

    def distinct(self, n: int, max_chars: int) -> list[str]:
        out: list[str] = []
        for _ in range(20 * n):
            text = self.label(max_chars, self.rng.randint(1, 2))
            if text and text not in out:
                out.append(text)
            if len(out) == n:
                return out
        return out + [f"{out[0] if out else 'S'} {i}" for i in range(len(out) + 1, n + 1)][: n - len(out)]

    def title(self) -> str:
        return _clip(self.corpus.title(self.rng), self.lang, 24 if self.lang == "zh" else 60)


_MONTHS = {
    "en": ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"],
    "zh": [f"{i}月" for i in range(1, 13)],
}
_QUARTERS = {"en": ["Q1", "Q2", "Q3", "Q4"], "zh": ["第一季度", "第二季度", "第三季度", "第四季度"]}


def _categories(texts: _Texts, rng: random.Random, n: int, ordered: bool) -> list[str]:
    """x labels: corpus words, or (for trends) years, months or quarters."""
    lang = texts.lang
    if ordered and rng.random() < 0.6:
        pick = rng.choice(("year", "month", "quarter") if n <= 4 else ("year", "month"))
        if pick == "year":
            start = rng.randint(1990, 2030 - n)
            return [f"{y}年" if lang == "zh" else str(y) for y in range(start, start + n)]
        if pick == "month":
            start = rng.randint(0, 12 - n)
            return _MONTHS[lang][start : start + n]
        return _QUARTERS[lang][:n]
    return texts.distinct(n, 6 if lang == "zh" else 14)


def _magnitude(rng: random.Random) -> float:
    return rng.choice((1, 10, 100, 1000, 10000)) * rng.choice((1, 2, 5))


def _values(rng: random.Random, n: int, magnitude: float, trend: bool, negatives: bool) -> tuple[list, int]:
    """n values at `magnitude`, rounded to the decimals that will be printed; returns (values, decimals)."""
    if magnitude >= 1000:  # long numbers: integers only
        decimals = 0
    elif magnitude < 5:  # small numbers: integers would all look alike
        decimals = rng.choice((1, 2))
    else:
        decimals = rng.choices((0, 1, 2), (0.45, 0.4, 0.15))[0]
    if trend:  # a multiplicative random walk reads like a time series and stays positive
        level, raw = rng.uniform(0.3, 0.8) * magnitude, []
        for _ in range(n):
            level *= math.exp(rng.gauss(0.02, 0.2))
            raw.append(level)
    else:  # >= 0.3 of the largest: with <= 7 pie slices every slice keeps >= 4% of the pie
        raw = [rng.uniform(0.3, 1.0) * magnitude for _ in range(n)]
    if negatives and rng.random() < 0.15:  # some charts show losses
        shift = rng.uniform(0.2, 0.6) * magnitude
        raw = [v - shift for v in raw]
    if decimals == 0:
        return [int(round(v)) for v in raw], 0
    return [round(v, decimals) + 0.0 for v in raw], decimals  # + 0.0 turns -0.0 into 0.0


def random_chart(kind: str, texts: _Texts, rng: random.Random, simple: bool = False) -> Chart:
    """Chart content: title, x labels and series, all deterministic from rng.

    simple: one series of 3-6 categories (a small model's first charts).
    """
    short = 6 if texts.lang == "zh" else 14
    if kind == "pie":
        xs = texts.distinct(rng.randint(3, 7), short)
        values, decimals = _values(rng, len(xs), _magnitude(rng), trend=False, negatives=False)
        return Chart(kind, texts.title(), xs, [Series("", dict(zip(xs, values, strict=True)), decimals)])
    n_series = {"bar": rng.choice((1, 1, 2, 3)), "barh": 1, "line": rng.choice((1, 1, 2, 3)), "bar_line": 2}[kind]
    n_series = 1 if simple and kind != "bar_line" else n_series
    n = rng.randint(3, 6 if simple else 10 if kind == "barh" else {1: 10, 2: 7, 3: 5}[n_series])
    xs = _categories(texts, rng, n, ordered=kind in ("line", "bar_line"))
    names = texts.distinct(n_series, 8 if texts.lang == "zh" else 18) if n_series > 1 else [""]
    # bar_line: half the time the line is a different quantity (own magnitude, right axis)
    twin = kind == "bar_line" and rng.random() < 0.5
    magnitude, series = _magnitude(rng), []
    for i, name in enumerate(names):
        if twin and i == 1:
            magnitude = _magnitude(rng)
        values, decimals = _values(rng, n, magnitude, trend=kind != "bar", negatives=kind != "bar_line")
        series.append(Series(name, dict(zip(xs, values, strict=True)), decimals))
    return Chart(kind, texts.title(), xs, series, twin=twin)


# --- drawing ------------------------------------------------------------------------------------------


@dataclass
class Look:
    """Per-chart visual choices drawn from rng (besides the theme)."""

    font: str
    font_size: float
    height_ratio: float
    bar_width: float
    marker: str
    donut: bool
    pie_labels_outside: bool


def _draw_bars(ax, chart: Chart, theme: Theme, look: Look, series: list[Series], offset: int = 0) -> list:
    horizontal = chart.kind == "barh"
    n, k = len(series), len(chart.xs)
    width = look.bar_width / n
    labels = []
    for i, s in enumerate(series):
        pos = [j + (i - (n - 1) / 2) * width for j in range(k)]
        values = [s.values[x] for x in chart.xs]
        color = theme.palette[(i + offset) % len(theme.palette)]
        draw = ax.barh if horizontal else ax.bar
        bars = draw(pos, values, width * 0.9, label=s.name or None, color=color)
        labels += ax.bar_label(bars, labels=[s.text(x) for x in chart.xs], padding=3, fontsize=look.font_size * 0.85)
    return labels


def _draw_lines(ax, chart: Chart, theme: Theme, look: Look, series: list[Series], offset: int = 0) -> list:
    labels = []
    echarts = theme.family == "echarts"
    background = theme.rc.get("axes.facecolor", "white")
    # over bars (bar_line) a label needs its own background to stay readable
    box = {"boxstyle": "round,pad=0.15", "fc": background, "ec": "none", "alpha": 0.85} if offset else None
    for i, s in enumerate(series):
        values = [s.values[x] for x in chart.xs]
        color = theme.palette[(i + offset) % len(theme.palette)]
        face = theme.rc.get("axes.facecolor", "white") if echarts else color
        ax.plot(range(len(values)), values, marker=look.marker, color=color, mfc=face, mew=2, label=s.name or None)
        dy = -1 if (i + offset) % 2 else 1  # alternate above/below so two series' labels rarely collide
        for j, x in enumerate(chart.xs):
            labels.append(
                ax.annotate(
                    s.text(x),
                    (j, values[j]),
                    xytext=(0, 9 * dy),
                    textcoords="offset points",
                    ha="center",
                    va="bottom" if dy > 0 else "top",
                    fontsize=look.font_size * 0.85,
                    color=color if echarts else None,
                    bbox=box,
                )
            )
    return labels


def _is_light(rgba) -> bool:
    r, g, b = rgba[:3]
    return 0.299 * r + 0.587 * g + 0.114 * b > 0.6


def _draw_pie(ax, chart: Chart, theme: Theme, look: Look) -> list:
    s = chart.series[0]
    values = [s.values[x] for x in chart.xs]
    colors = [theme.palette[i % len(theme.palette)] for i in range(len(values))]
    wedgeprops = {"width": 0.45} if look.donut else {}
    edge = theme.rc.get("patch.edgecolor", "white")
    wedges, names = ax.pie(
        values,
        labels=chart.xs if look.pie_labels_outside else None,
        colors=colors,
        startangle=90,
        counterclock=False,
        labeldistance=1.08,
        wedgeprops={**wedgeprops, "edgecolor": edge, "linewidth": 1.5},
        textprops={"fontsize": look.font_size},
    )
    labels = list(names) if look.pie_labels_outside else []  # without labels matplotlib returns empty texts
    radius = 0.775 if look.donut else 0.65
    for wedge, x in zip(wedges, chart.xs, strict=True):
        angle = math.radians((wedge.theta1 + wedge.theta2) / 2)
        labels.append(
            ax.text(
                radius * math.cos(angle),
                radius * math.sin(angle),
                s.text(x),
                ha="center",
                va="center",
                fontsize=look.font_size * 0.85,
                color="#333333" if _is_light(wedge.get_facecolor()) else "white",
                fontweight="bold",
            )
        )
    if not look.pie_labels_outside:
        ax.legend(wedges, chart.xs, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=look.font_size)
    ax.set_aspect("equal")
    return labels


def _wrap_title(title: str, lang: str) -> str:
    width = 22 if lang == "zh" else 48
    if lang == "zh":
        return "\n".join(title[i : i + width] for i in range(0, len(title), width))
    return "\n".join(textwrap.wrap(title, width)) or title


def draw_chart(fig: Figure, chart: Chart, theme: Theme, look: Look, lang: str) -> list:
    """Draw `chart` on a cleared figure; returns the value-label texts (checked for overlap later)."""
    ax = fig.add_subplot()
    rotate = chart.kind != "barh" and len(chart.xs) * max(len(x) for x in chart.xs) * (2 if lang == "zh" else 1) > 60
    twin = chart.twin
    top = 0.80 if theme.legend_top and len(chart.series) > 1 else 0.86
    fig.subplots_adjust(left=0.1, right=0.9 if twin else 0.95, top=top, bottom=0.2 if rotate else 0.1)
    if chart.kind == "barh":
        longest = max(len(x) for x in chart.xs) * (2 if lang == "zh" else 1)
        fig.subplots_adjust(left=min(0.45, 0.06 + 0.0105 * longest * look.font_size / 12))
    handles_axes = [ax]
    if chart.kind == "pie":
        fig.subplots_adjust(left=0.05, right=0.7 if not look.pie_labels_outside else 0.95, top=0.84, bottom=0.06)
        labels = _draw_pie(ax, chart, theme, look)
    elif chart.kind in ("bar", "barh"):
        labels = _draw_bars(ax, chart, theme, look, chart.series)
    elif chart.kind == "line":
        labels = _draw_lines(ax, chart, theme, look, chart.series)
        ax.set_xticks(range(len(chart.xs)))
    else:  # bar_line: bars for the first series, a line for the second (secondary axis when scales differ)
        labels = _draw_bars(ax, chart, theme, look, chart.series[:1])
        line_ax = ax.twinx() if twin else ax
        if twin:
            line_ax.grid(False)
            handles_axes.append(line_ax)
        labels += _draw_lines(line_ax, chart, theme, look, chart.series[1:], offset=1)
    if chart.kind != "pie":
        if chart.kind == "barh":
            ax.set_yticks(range(len(chart.xs)), chart.xs)
            ax.invert_yaxis()  # first category on top, like reading order
            ax.margins(x=0.15)
        else:
            ax.set_xticks(
                range(len(chart.xs)), chart.xs, rotation=35 if rotate else 0, ha="right" if rotate else "center"
            )
            for a in handles_axes:
                a.margins(y=0.15)
    ax.set_title(_wrap_title(chart.title, lang), fontsize=look.font_size * 1.45, pad=28 if theme.legend_top else 12)
    if len(chart.series) > 1:
        handles = [h for a in handles_axes for h in a.get_legend_handles_labels()[0]]
        names = [s.name for s in chart.series]
        if theme.legend_top:
            fig.legend(
                handles,
                names,
                loc="upper center",
                bbox_to_anchor=(0.5, top + 0.055),
                ncol=len(names),
                fontsize=look.font_size,
            )
        else:
            ax.legend(handles, names, loc="best", fontsize=look.font_size)
    return labels


def layout_problem(fig: Figure, labels: list) -> str | None:
    """Why the drawn chart would not show its full target (text off the canvas, value labels overlapping)."""
    renderer = fig.canvas.get_renderer()
    width, height = fig.canvas.get_width_height()
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
    for t in texts:
        box = t.get_window_extent(renderer)
        if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1:
            return f"text {t.get_text()[:20]!r} outside the canvas"
    boxes = [t.get_window_extent(renderer) for t in labels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            if a.overlaps(b):
                return "value labels overlap"
    # a line marker on top of a value label hides digits
    for line in (x for ax in fig.axes for x in ax.get_lines() if x.get_marker() not in (None, "None", "")):
        half = line.get_markersize() * fig.dpi / 72 / 2 + 1
        points = line.get_transform().transform(line.get_xydata())
        for box in boxes:
            if any(box.x0 - half < x < box.x1 + half and box.y0 - half < y < box.y1 + half for x, y in points):
                return "a line marker covers a value label"
    return None


class _TextRecorder:
    """A renderer that forwards every call to the Agg renderer and records each text line drawn through it:
    matplotlib keeps Text artists it does not draw (ticks outside the view), so only the draw knows what shows."""

    def __init__(self, renderer):
        self._renderer, self.lines = renderer, []

    def __getattr__(self, name):
        return getattr(self._renderer, name)

    def draw_text(self, gc, x, y, s, prop, angle, ismath=False, mtext=None):
        self.lines.append((s, x, y, prop, angle, ismath))  # (x, y): the baseline's left end, image pixels
        return self._renderer.draw_text(gc, x, y, s, prop, angle, ismath, mtext)


def glyph_lines(fig: Figure) -> list[list] | None:
    """Every text line the figure draws as [text, [[left, top, right, bottom] per character]] in image pixels,
    or None when a line is rotated (its glyphs have no upright box). Redraws the figure (same pixels).

    A character's box spans its line from the ascent to the descent, and horizontally from the advance of the
    characters before it to the advance including it (kerning included, as the renderer measures a prefix)."""
    renderer = fig.canvas.get_renderer()
    recorder = _TextRecorder(renderer)
    fig.draw(recorder)
    out = []
    for text, x, y, prop, angle, ismath in recorder.lines:
        if angle % 360:
            return None
        if ismath or not text.strip():
            continue
        _, height, descent = renderer.get_text_width_height_descent(text, prop, ismath=False)
        top, bottom = y - (height - descent), y + descent
        edges = [x] + [x + renderer.get_text_width_height_descent(text[: i + 1], prop, ismath=False)[0]
                       for i in range(len(text))]  # fmt: skip
        boxes = [[round(a, 1), round(top, 1), round(max(a, b), 1), round(bottom, 1)]
                 for a, b in itertools.pairwise(edges)]  # fmt: skip
        out.append([text, boxes])
    return out


# --- the generator ------------------------------------------------------------------------------------


def _names(value: str | tuple | list) -> tuple[str, ...]:
    """An option given as "a,b" on the command line or as a sequence in Python."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(x.strip() for x in items if x.strip())


class ChartGenerator:
    """Synthetic charts (bar, barh, line, pie, bar+line) in English or Chinese; task "chart".

    Images keep the chart's aspect ratio (square, 4:3, 16:9 or portrait) with the longest side `size`.
    """

    name = "charts"
    langs = ("en", "zh")

    def __init__(
        self,
        count: int | None,
        lang: str = "en",
        size: int = 1024,
        kinds: str | tuple[str, ...] = KINDS,
        families: str | tuple[str, ...] = FAMILIES,
        corpus_dir: str | Path | None = None,
        attempts: int | str = 4,
        simple: bool | str = False,
        font_scale: float | str = 1.0,
        text: str = "generator",
        split: str | None = None,
        boxes: bool | str = False,
    ):
        if count is None:
            raise ValueError("charts: --count is required (charts are generated, there is no input to exhaust)")
        if lang not in self.langs:
            raise ValueError(f"charts: lang must be 'en' or 'zh', got {lang!r}")
        self.kinds, self.families = _names(kinds), _names(families)
        bad = [k for k in self.kinds if k not in KINDS] + [f for f in self.families if f not in FAMILIES]
        if bad or not self.kinds or not self.families:
            raise ValueError(f"charts: unknown or empty kinds/families {bad}; kinds {KINDS}, families {FAMILIES}")
        self.count, self.lang, self.size, self.attempts = int(count), lang, int(size), int(attempts)
        # simple: one series, 3-6 categories; font_scale: larger text, legible at a small model's input size
        self.simple = option_flag(simple, "simple")
        self.font_scale = float(font_scale)
        if not 0.5 <= self.font_scale <= 4:
            raise ValueError(f"charts: font_scale must be in [0.5, 4], got {font_scale!r}")
        self.corpus, split = text_source("charts", lang, text, split, corpus_dir)
        self.text, self.split = text, split
        self.boxes = option_flag(boxes, "boxes")
        self.fonts = chart_font_families(lang, split)
        self._fig: Figure | None = None  # one figure per process, cleared between charts

    def describe(self) -> dict:
        return {"kinds": list(self.kinds), "families": list(self.families), "fonts": self.fonts,
                "text": self.text, "split": self.split}  # fmt: skip

    def __len__(self) -> int:
        return self.count

    def __getstate__(self) -> dict:  # workers get a copy without the live figure
        return {**self.__dict__, "_fig": None}

    def _figure(self) -> Figure:
        if self._fig is None:
            self._fig = Figure()
            FigureCanvasAgg(self._fig)
        return self._fig

    def make(self, index: int, rng: random.Random) -> Sample:
        problem = ""
        for _ in range(self.attempts):  # redraw from the same rng stream: still deterministic
            kind, family = rng.choice(self.kinds), rng.choice(self.families)
            theme = make_theme(family, rng)
            chart = random_chart(kind, _Texts(self.corpus, self.lang, rng), rng, self.simple)
            look = Look(
                font=rng.choice(self.fonts),
                font_size=rng.uniform(12.0, 17.0) * self.font_scale,
                height_ratio=rng.choices([a for a, _ in ASPECTS], [p for _, p in ASPECTS])[0],
                bar_width=rng.uniform(0.6, 0.85),
                marker=rng.choice(("o", "s", "^", "D")),
                donut=rng.random() < 0.35,
                pie_labels_outside=rng.random() < 0.6,
            )
            image, problem, lines = self._render(chart, theme, look)
            if image is not None:
                meta = {"chart_kind": kind, "family": family, "theme": theme.name, "font": look.font}
                if lines is not None:
                    meta["text_lines"] = lines
                return Sample(
                    key=f"{self.name}-{self.lang}-{index:08d}",
                    image=image,
                    target=chart.answer(),
                    task="chart",
                    lang=self.lang,
                    kind=self.name,
                    meta=meta,
                )
        raise SkipSample(f"charts: no clean layout in {self.attempts} attempts ({problem})")

    def _render(self, chart: Chart, theme: Theme, look: Look) -> tuple[Image.Image | None, str, list | None]:
        """(image, "", text lines if boxes) or (None, why the layout failed, None)."""
        fig = self._figure()
        rc = {
            **theme.rc,
            "axes.prop_cycle": cycler(color=list(theme.palette)),
            "font.family": [look.font, "DejaVu Sans"],
            "text.parse_math": False,  # a '$' in a label must stay a dollar sign
            "axes.unicode_minus": False,  # CJK fonts lack U+2212; and the target spells '-'
            "svg.hashsalt": "vary",
        }
        if self.font_scale != 1.0:  # tick labels follow font.size (10 pt); scale them with the rest
            rc["xtick.labelsize"] = rc["ytick.labelsize"] = 10.0 * self.font_scale
        with matplotlib.rc_context():
            matplotlib.rcdefaults()  # ignore any user matplotlibrc: same pixels on every machine
            matplotlib.rcParams.update(rc)
            fig.clf()
            fig.set_facecolor(matplotlib.rcParams["figure.facecolor"])
            ratio = look.height_ratio  # the longest side is `size` pixels, as the generator protocol asks
            width_in = FIG_SIDE_IN if ratio <= 1 else FIG_SIDE_IN / ratio
            fig.set_dpi(self.size / FIG_SIDE_IN)
            fig.set_size_inches(width_in, width_in * ratio)
            labels = draw_chart(fig, chart, theme, look, self.lang)
            fig.canvas.draw()
            problem = layout_problem(fig, labels)
            lines = glyph_lines(fig) if self.boxes and not problem else None
            if self.boxes and not problem and lines is None:
                problem = "rotated text has no glyph boxes"
            if problem:
                return None, problem, None
            w, h = fig.canvas.get_width_height()
            image = Image.frombuffer("RGBA", (w, h), bytes(fig.canvas.buffer_rgba())).convert("RGB")
        return image, "", lines
