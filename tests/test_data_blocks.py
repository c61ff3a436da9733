"""blocks source (text blocks for the bundled model), the restricted Chinese vocabulary, simple charts."""

from __future__ import annotations

import random

import pytest

from test_data_sources import CJK, _ink_bands
from vary.data.sources import get_source
from vary.data.sources.charts import parse_chart_answer
from vary.data.text import TextCorpus, common_chars


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_blocks_draw_exactly_the_target_lines(lang):
    source = get_source("blocks", count=6, lang=lang, size=384, lines="2-5")
    for index in range(6):
        sample = source.make(index, random.Random(index))
        lines = sample.target.split("\n")
        assert sample.image.size == (384, 384) and sample.task == "ocr" and sample.kind == "blocks"
        assert 2 <= len(lines) <= 5 and all(line.strip() for line in lines)
        assert _ink_bands(sample.image, paper_margin=40) == len(lines) == sample.meta["lines"]
        assert bool(CJK.search(sample.target)) == (lang == "zh")
    a, b = source.make(3, random.Random(9)), source.make(3, random.Random(9))
    assert a.target == b.target and a.image.tobytes() == b.image.tobytes()


def test_blocks_chinese_within_the_common_characters():
    allowed = common_chars(1000)
    assert len(allowed) == 1000 and "的" in allowed
    source = get_source("blocks", count=4, lang="zh", size=384, zh_chars="1000")
    text = "".join(source.make(i, random.Random(i)).target for i in range(4))
    hanzi = set(CJK.findall(text))
    assert hanzi and hanzi <= allowed
    # unrestricted text does use rarer characters
    free = TextCorpus("zh").paragraph(random.Random(0), 40)
    assert set(CJK.findall(free)) - allowed


@pytest.mark.parametrize(
    "options", [{"lines": "0-3"}, {"lines": "5-2"}, {"font": "0.6-0.7"}, {"zh_chars": "10"}, {"count": None}]
)
def test_blocks_bad_options_are_clear_errors(options):
    kwargs = {"count": 2, "lang": "zh", "size": 384, **options}
    with pytest.raises(ValueError):
        get_source("blocks", **kwargs)


def test_simple_bar_charts_have_one_series_of_three_to_six_bars():
    source = get_source("charts", count=3, lang="en", size=384, kinds="bar", simple="true", font_scale="2.2")
    for index in range(3):
        answer = parse_chart_answer(source.make(index, random.Random(index)).target)
        assert 3 <= len(answer["data"]) <= 6
        assert all(isinstance(v, int | float) for v in answer["data"].values())  # one series: flat dict
    with pytest.raises(ValueError, match="font_scale"):
        get_source("charts", count=1, font_scale="9")
