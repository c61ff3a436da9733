"""blocks generator (text blocks for the bundled model), the restricted Chinese vocabulary, simple charts."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from test_data_generators import CJK, _ink_bands
from vary.chart_answer import parse_chart_answer
from vary.data.generators import get_generator
from vary.data.text import TextCorpus, common_chars


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_blocks_draw_exactly_the_target_lines(lang):
    generator = get_generator("blocks", count=6, lang=lang, size=384, lines="2-5")
    for index in range(6):
        sample = generator.make(index, random.Random(index))
        lines = sample.target.split("\n")
        assert sample.image.size == (384, 384) and sample.task == "ocr" and sample.kind == "blocks"
        assert 2 <= len(lines) <= 5 and all(line.strip() for line in lines)
        assert _ink_bands(sample.image, paper_margin=40) == len(lines) == sample.meta["lines"]
        assert bool(CJK.search(sample.target)) == (lang == "zh")
    a, b = generator.make(3, random.Random(9)), generator.make(3, random.Random(9))
    assert a.target == b.target and a.image.tobytes() == b.image.tobytes()


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_blocks_character_boxes_cover_each_glyph_and_all_the_ink(lang):
    plain = get_generator("blocks", count=3, lang=lang, size=384, lines="1-3")
    boxed = get_generator("blocks", count=3, lang=lang, size=384, lines="1-3", boxes="true")
    for index in range(3):
        sample = boxed.make(index, random.Random(index))
        assert sample.image.tobytes() == plain.make(index, random.Random(index)).image.tobytes()
        chars, boxes = sample.target.replace("\n", ""), sample.meta["char_boxes"]
        assert len(boxes) == len(chars)
        pixels = np.asarray(sample.image.convert("L")).astype(int)
        paper = np.median(pixels)
        covered = np.zeros_like(pixels, dtype=bool)
        for ch, (left, top, right, bottom) in zip(chars, boxes, strict=True):
            assert 0 <= left < right <= 384 and 0 <= top < bottom <= 384
            if not ch.isspace():
                assert pixels[top:bottom, left:right].min() < paper - 60, f"no ink in the box of {ch!r}"
                covered[top:bottom, left:right] = True
        assert (pixels[~covered] > paper - 60).all(), "ink outside every character box"
        lefts = [box[0] for box in boxes[: len(sample.target.split("\n")[0])]]
        assert lefts == sorted(lefts)  # first line: left to right
    assert "char_boxes" not in plain.make(0, random.Random(0)).meta


def test_blocks_chinese_within_the_common_characters():
    allowed = common_chars(1000)
    assert len(allowed) == 1000 and "的" in allowed
    generator = get_generator("blocks", count=4, lang="zh", size=384, zh_chars="1000")
    text = "".join(generator.make(i, random.Random(i)).target for i in range(4))
    hanzi = set(CJK.findall(text))
    assert hanzi and hanzi <= allowed
    # unrestricted text does use rarer characters
    free = TextCorpus("zh").paragraph(random.Random(0), 40)
    assert set(CJK.findall(free)) - allowed


@pytest.mark.parametrize(
    "options",
    [{"lines": "0-3"}, {"lines": "5-2"}, {"font": "0.6-0.7"}, {"zh_chars": "10"}, {"count": None}, {"boxes": "maybe"}],
)
def test_blocks_bad_options_are_clear_errors(options):
    kwargs = {"count": 2, "lang": "zh", "size": 384, **options}
    with pytest.raises(ValueError):
        get_generator("blocks", **kwargs)


def test_simple_bar_charts_have_one_series_of_three_to_six_bars():
    generator = get_generator("charts", count=3, lang="en", size=384, kinds="bar", simple="true", font_scale="2.2")
    for index in range(3):
        answer = parse_chart_answer(generator.make(index, random.Random(index)).target)
        assert 3 <= len(answer["data"]) <= 6
        assert all(isinstance(v, int | float) for v in answer["data"].values())  # one series: flat dict
    with pytest.raises(ValueError, match="font_scale"):
        get_generator("charts", count=1, font_scale="9")
    with pytest.raises(ValueError, match="simple= must be true or false"):  # not a silent "no"
        get_generator("charts", count=1, simple="ture")


def test_cli_boxes_option_records_boxes_and_preview_outlines_them(tmp_path):
    from typer.testing import CliRunner

    from vary.data.cli import app

    def red_pixels(boxes: str) -> int:
        out = tmp_path / boxes
        args = ["generate", "blocks", "--out", str(out), "--count", "2", "--size", "256", "--workers", "1",
                "--quiet", "-o", "lines=1-2", "-o", "font=0.1-0.15", "-o", f"boxes={boxes}"]  # fmt: skip
        assert CliRunner().invoke(app, args).exit_code == 0
        sheet = tmp_path / f"{boxes}.png"
        result = CliRunner().invoke(app, ["preview", str(out), "--out", str(sheet), "--n", "2"])
        assert result.exit_code == 0, result.output
        rgb = np.asarray(Image.open(sheet).convert("RGB")).astype(int)
        return int(((rgb[..., 0] > 200) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)).sum())

    plain, outlined = red_pixels("false"), red_pixels("true")  # plain: the sheet's own red captions
    assert outlined > plain + 500, (plain, outlined)


def test_blocks_words_come_as_one_line_of_several_words_at_every_size():
    def big_lines(samples):  # lines of 2+ words in type of 65 px or more
        return sum(len(s.target.split()) >= 2 and s.meta["font_px"] >= 65 for s in samples)

    generator = get_generator("blocks", count=60, lang="en", size=384, words="2-3", font="0.12-0.22")
    samples = [generator.make(i, random.Random(i)) for i in range(60)]
    for s in samples:
        assert "\n" not in s.target and 1 <= len(s.target.split()) <= 3
        assert 46 <= s.meta["font_px"] <= 84  # 0.12-0.22 of 384, shrunk only down to the smallest
    assert sum(len(s.target.split()) >= 2 for s in samples) >= 55
    plain = get_generator("blocks", count=60, lang="en", size=384, lines="1-1", font="0.12-0.22")
    assert big_lines(samples) >= 10 > big_lines([plain.make(i, random.Random(i)) for i in range(60)])
    a, b = generator.make(7, random.Random(3)), generator.make(7, random.Random(3))
    assert a.target == b.target and a.image.tobytes() == b.image.tobytes()
    with pytest.raises(ValueError, match="English"):
        get_generator("blocks", count=1, lang="zh", words="2-3")


def test_blocks_placed_anywhere_keep_their_text_and_spread_over_the_image():
    def ink_box(image):  # (left, top, right, bottom) of the ink
        a = np.asarray(image.convert("L")).astype(int)
        ys, xs = np.nonzero(a < np.median(a) - 60)
        return xs.min(), ys.min(), xs.max(), ys.max()

    kwargs = {"count": 40, "lang": "en", "size": 384, "lines": "1-3", "font": "0.08-0.15"}
    margin, anywhere = get_generator("blocks", **kwargs), get_generator("blocks", place="anywhere", **kwargs)
    boxes = []
    for i in range(40):
        a, b = margin.make(i, random.Random(i)), anywhere.make(i, random.Random(i))
        assert a.target == b.target and a.meta == b.meta  # the placement is drawn after the text
        assert _ink_bands(b.image) == b.meta["lines"]
        boxes.append(ink_box(b.image))
    lefts, tops, rights, bottoms = np.array(boxes).T
    assert rights.max() < 384 and bottoms.max() < 384 and lefts.min() >= 0 and tops.min() >= 0
    assert lefts.max() > 150 and tops.max() > 150  # far from the 3-8% margin the default keeps
    assert lefts.std() > 30 and tops.std() > 30
    with pytest.raises(ValueError, match="place"):
        get_generator("blocks", count=1, place="middle")


def test_cli_warns_when_some_font_families_are_missing(tmp_path, monkeypatch):
    """Without the Liberation fonts the samples silently came from DejaVu alone (seen on a fresh machine)."""
    from typer.testing import CliRunner

    from vary.cli import app
    from vary.data import fonts

    dejavu_only = tuple(p for p in fonts._installed() if p.name.startswith("DejaVu"))
    assert dejavu_only and fonts.missing_families("en") == []  # the test machine has every family
    monkeypatch.setattr(fonts, "_installed", lambda: dejavu_only)
    assert fonts.missing_families("en") == ["LiberationSans", "LiberationSerif", "LiberationMono"]
    args = ["data", "generate", "blocks", "--count", "2", "--size", "128", "--workers", "1", "--quiet"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "en")])
    assert result.exit_code == 0, result.output
    assert "warning: en fonts LiberationSans, LiberationSerif, LiberationMono are not installed" in result.output
    manifest = json.loads((tmp_path / "en" / "manifest.json").read_text())
    assert all(f.startswith("DejaVu") for f in manifest["series"]["blocks-en"]["generator"]["fonts"])
    # No family at all stays an error, not a warning.
    monkeypatch.setattr(fonts, "_installed", lambda: ())
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "none")])
    assert result.exit_code != 0 and "warning" not in result.output and "setup.sh" in result.output
