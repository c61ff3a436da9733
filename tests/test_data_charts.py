"""The charts generator: the python-dict target gives back exactly the plotted and printed numbers."""

from __future__ import annotations

import io
import pickle
import random
import subprocess
import sys
import warnings

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vary.chart_answer import parse_chart_answer
from vary.data.generators import get_generator
from vary.data.generators.charts import (
    FAMILIES,
    KINDS,
    ChartGenerator,
    Look,
    _Texts,
    draw_chart,
    make_theme,
    random_chart,
)
from vary.prompts import CHART_ANSWER_PREFIX, TASK_PROMPTS


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def en_generator():
    return ChartGenerator(count=50, lang="en", size=256)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_kind_and_family_round_trips(en_generator, kind, family):
    generator = ChartGenerator(count=5, lang="en", size=256, kinds=kind, families=family)
    generator.corpus = en_generator.corpus  # share the loaded corpus
    sample = generator.make(3, random.Random(f"{kind}-{family}"))
    assert sample.task == "chart" and sample.task in TASK_PROMPTS and sample.kind == "charts"
    assert sample.meta["chart_kind"] == kind and sample.meta["family"] == family
    assert sample.image.mode == "RGB" and max(sample.image.size) == 256
    assert sample.target.startswith(CHART_ANSWER_PREFIX)
    answer = parse_chart_answer(sample.target)
    assert set(answer) == {"title", "data"} and answer["title"] and answer["data"]
    # one series -> {x: value}; several -> {series: {x: value}} (bar+line always has two)
    multi = isinstance(next(iter(answer["data"].values())), dict)
    series = list(answer["data"].values()) if multi else [answer["data"]]
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for s in series for v in s.values())
    if kind in ("pie", "barh"):
        assert not multi
    if kind == "bar_line":
        assert multi and len(answer["data"]) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_plotted_and_printed_numbers_are_the_target(en_generator, kind):
    """Bars/points/wedges are drawn at the target's values, and each value label prints the target's digits."""
    for seed in range(3):
        rng = random.Random(seed)
        theme = make_theme(rng.choice(FAMILIES), rng)
        chart = random_chart(kind, _Texts(en_generator.corpus, "en", rng), rng)
        assert parse_chart_answer(chart.answer()) == {"title": chart.title, "data": chart.data()}
        fig = Figure(figsize=(10.24, 10.24), dpi=25)
        FigureCanvasAgg(fig)
        look = Look("DejaVu Sans", 12.0, 1.0, 0.7, "o", donut=seed == 1, pie_labels_outside=seed != 2)
        labels = draw_chart(fig, chart, theme, look, "en")
        if kind == "pie" and look.pie_labels_outside:  # the slice names come first
            assert [t.get_text() for t in labels[: len(chart.xs)]] == chart.xs
            labels = labels[len(chart.xs) :]
        printed = [t.get_text() for t in labels]
        expected = [s.text(x) for s in chart.series for x in chart.xs]
        assert printed == expected
        assert [float(t) for t in printed] == [s.values[x] for s in chart.series for x in chart.xs]
        drawn = []
        for ax in fig.axes:
            drawn += [v for c in ax.containers for v in c.datavalues]  # bars
            drawn += [y for line in ax.get_lines() for y in line.get_ydata()]  # line points
        if kind == "pie":  # wedge angles are proportional to the values
            wedges = [p for p in fig.axes[0].patches if hasattr(p, "theta1")]
            spans = [w.theta2 - w.theta1 for w in wedges]
            values = list(chart.series[0].values.values())
            assert spans == pytest.approx([360 * v / sum(values) for v in values], abs=1e-6)
        else:
            assert sorted(drawn) == pytest.approx(sorted(v for s in chart.series for v in s.values.values()))


def test_same_rng_same_png_bytes_even_after_other_charts():
    a, b = ChartGenerator(count=9, lang="en", size=256), ChartGenerator(count=9, lang="en", size=256)
    first = png_bytes(a.make(4, random.Random(99)).image)
    a.make(5, random.Random(5))  # the reused figure must carry nothing over
    assert png_bytes(a.make(4, random.Random(99)).image) == first
    assert png_bytes(b.make(4, random.Random(99)).image) == first
    assert png_bytes(a.make(4, random.Random(100)).image) != first


def test_chinese_charts_have_every_glyph_and_work_through_the_registry():
    generator = get_generator("charts", count=4, lang="zh", size=256, kinds="bar,pie", families="echarts,matplotlib")
    generator = pickle.loads(pickle.dumps(generator))  # engine workers may receive a pickled copy
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph ... missing from font"
        for i in range(3):
            sample = generator.make(i, random.Random(i))
            answer = parse_chart_answer(sample.target)
            text = answer["title"] + "".join(answer["data"])
            assert any("\u4e00" <= c <= "\u9fff" for c in text)
            assert sample.lang == "zh" and sample.meta["font"].endswith(" SC")


@pytest.mark.parametrize(
    "bad",
    [
        "The dict of the chart is: {'title': 'x', 'data': {'a': 1}",  # truncated
        "The dict of the chart is: ['title', 'data']",  # not a dict
        "{'title': 'x'}",  # no data
        "{'title': 'x', 'data': 3}",  # data not a dict
        "__import__('os').system('true')",  # never evaluated
        "",
    ],
)
def test_parse_chart_answer_rejects_bad_input_with_value_error(bad):
    with pytest.raises(ValueError, match="chart answer"):
        parse_chart_answer(bad)


def test_parse_chart_answer_accepts_prefix_or_bare_dict_and_non_str_is_refused():
    bare = "{'title': 'T', 'data': {'s': {'a': 1.5, 'b': -2}}}"
    assert parse_chart_answer(CHART_ANSWER_PREFIX + bare) == parse_chart_answer("  " + bare + "\n")
    with pytest.raises(ValueError, match="must be a str"):
        parse_chart_answer(None)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="unknown"):
        ChartGenerator(count=1, kinds="bar,radar")
    with pytest.raises(ValueError, match="count"):
        ChartGenerator(count=None)
    with pytest.raises(ValueError, match="lang"):
        ChartGenerator(count=1, lang="fr")


def test_chart_answers_are_read_without_matplotlib():
    """Inference and evaluation parse chart answers through vary.chart_answer, which must not pull the
    matplotlib-based charts generator in."""
    code = "import sys, vary.chart_answer, vary.eval.metrics, vary.eval.datasets; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
