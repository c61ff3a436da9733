"""Real prose (vary.data.prose) and held-out fonts: cleaning, the stable train / held-out partition, the
blocks generator drawing from it. Small fake package folders written here; the Debian packages are not needed."""

from __future__ import annotations

import random

import pytest
from typer.testing import CliRunner

from conftest import EN_FORTUNES
from vary.cli import app
from vary.data import prose
from vary.data.fonts import HELDOUT_FONTS, FontNotFoundError, find_fonts, font_covers
from vary.data.generators.blocks import BlocksGenerator
from vary.data.prose import ProseCorpus, ProseNotInstalledError, clean, load_passages, partition
from vary.modeling.lexicon import Lexicon


def test_clean_joins_lines_and_strips_colour_codes():
    assert clean("one\n\ttwo   three\n", "en") == "one two three"
    assert clean("\x1b[32m《静夜思》\x1b[m\n床前明月光，\n疑是地上霜。", "zh") == "《静夜思》床前明月光，疑是地上霜。"
    assert clean("用 Debian\n软件", "zh") == "用 Debian 软件"  # a break next to Latin text keeps a space


def test_partition_is_stable_and_splits_passages(packages):
    assert partition("A passage of prose.") == partition("A passage of prose.")
    train = load_passages("en", "train", *packages)
    heldout = load_passages("en", "heldout", *packages)
    assert not set(train) & set(heldout) and len(heldout) > 0 and len(train) > len(heldout)
    assert all(partition(p) == "heldout" for p in heldout)
    everything = set(train) | set(heldout)
    assert {clean(f, "en") for f in EN_FORTUNES} <= everything  # no passage lost
    assert (
        "The os module provides a portable way of using operating system dependent functionality & more." in everything
    )
    assert not any("cat drawn" in p or "Navigation" in p or "import os" in p or "binary" in p for p in everything)
    zh = load_passages("zh", "train", *packages) + load_passages("zh", "heldout", *packages)
    assert len(zh) == 60 and all(p.startswith("《诗") and "\x1b" not in p for p in zh)
    assert not any("fox" in p for p in zh) and not any("床前" in p for p in everything)


def test_prose_corpus_draws_only_from_its_split(packages):
    rng = random.Random(0)
    for lang in ("en", "zh"):
        corpus = ProseCorpus(lang, "heldout")
        joined = " ".join(corpus.passages)
        for _ in range(20):
            assert corpus.paragraph(rng, 2) in joined
            assert corpus.sentence(rng) in joined
            words = corpus.words(rng, 3)
            assert 1 <= len(words) <= 3 and all(w in joined for w in words)


def test_the_lexicon_command_lists_the_training_passages_words(packages, tmp_path):
    result = CliRunner().invoke(app, ["data", "lexicon", str(tmp_path / "lexicon.txt"), "--min-count", "2"])
    assert result.exit_code == 0, result.output
    counts = Lexicon.from_file(tmp_path / "lexicon.txt").counts
    train = " ".join(load_passages("en", "train", *packages)).lower()
    assert counts["fortune"] == train.count("fortune") and counts["the"] == train.count("the ")
    assert "navigation" not in counts and "cat" not in counts  # pages' menus and pictures are no prose
    assert all(n >= 2 for n in counts.values())
    # from the user's own documents instead
    doc = tmp_path / "doc.txt"
    doc.write_text("Invoice total. Invoice date, invoice number; TOTAL due.", encoding="utf-8")
    result = CliRunner().invoke(app, ["data", "lexicon", str(tmp_path / "own.txt"), "--text", str(doc)])
    assert result.exit_code == 0, result.output
    assert Lexicon.from_file(tmp_path / "own.txt").counts == {"invoice": 3, "total": 2}
    result = CliRunner().invoke(app, ["data", "lexicon", str(tmp_path / "x.txt"), "--text", str(tmp_path / "no.txt")])
    assert result.exit_code == 2 and "no.txt" in result.output and "Traceback" not in result.output


def test_missing_package_names_the_apt_package(tmp_path, monkeypatch):
    monkeypatch.setattr(prose, "FORTUNES_DIR", tmp_path / "absent")
    load_passages.cache_clear()
    with pytest.raises(ProseNotInstalledError, match="apt-get install --no-install-recommends fortunes-zh"):
        ProseCorpus("zh")
    with pytest.raises(ProseNotInstalledError, match="install --no-install-recommends fortunes"):
        ProseCorpus("en")
    result = CliRunner().invoke(app, ["data", "lexicon", str(tmp_path / "lexicon.txt")])
    assert result.exit_code != 0 and "apt-get install" in result.output and "Traceback" not in result.output
    load_passages.cache_clear()


def test_font_splits_are_disjoint():
    every = find_fonts("en", "regular")
    train, heldout = find_fonts("en", "regular", split="train"), find_fonts("en", "regular", split="heldout")
    assert heldout and train and not set(train) & set(heldout)
    assert all(p.stem.startswith(HELDOUT_FONTS["en"]) for p in heldout)
    assert set(train) | set(heldout) == set(every)
    with pytest.raises(ValueError, match="split"):
        find_fonts("en", split="test")


def test_missing_heldout_font_names_the_apt_package(monkeypatch):
    monkeypatch.setitem(HELDOUT_FONTS, "zh", ("NoSuchFace",))
    with pytest.raises(FontNotFoundError, match="apt-get install"):
        find_fonts("zh", split="heldout")


def test_blocks_from_prose_use_the_split_text_and_fonts(packages):
    heldout_fonts = {p.name for p in find_fonts("en", "regular", split="heldout")}
    for split in ("train", "heldout"):
        generator = BlocksGenerator(count=6, lang="en", size=256, lines="2-4", text="prose", split=split)
        joined = " ".join(load_passages("en", split, *packages))
        assert generator.describe()["split"] == split
        for i in range(6):
            sample = generator.make(i, random.Random(i))
            assert all(line in joined for line in sample.target.split("\n"))  # wrapped lines of its split
            assert (sample.meta["font"] in heldout_fonts) == (split == "heldout")
    assert BlocksGenerator(count=1, lang="en", text="prose").split == "train"  # never held-out by default
    with pytest.raises(ValueError, match="text must be"):
        BlocksGenerator(count=1, lang="en", text="novels")
    with pytest.raises(ValueError, match="excludes"):
        BlocksGenerator(count=1, lang="zh", text="prose", zh_chars=1000)


def test_blocks_skip_prose_a_face_cannot_draw(packages):
    fortunes, _ = packages
    dejavu = find_fonts("en", "regular")[0]
    assert font_covers(dejavu, "Hello, world") and not font_covers(dejavu, "Hello 床")
    # half the English fortunes now hold a character no English face has
    undrawable = [f"{text} 床前明月光" if i % 2 else text for i, text in enumerate(EN_FORTUNES)]
    (fortunes / "wisdom").write_text("\n%\n".join(undrawable), encoding="utf-8")
    load_passages.cache_clear()
    generator = BlocksGenerator(count=20, lang="en", size=256, lines="3-6", text="prose", split="train")
    targets = [generator.make(i, random.Random(i)).target for i in range(20)]
    assert all(t.strip() and "床" not in t for t in targets)
