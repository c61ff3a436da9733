"""Evaluation metrics against values worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import nltk
import pytest
from nltk.corpus.reader.wordnet import WordNetCorpusReader

from vary.eval import metrics as m
from vary.eval.nltk_data import install_wordnet

EN_PRED, EN_REF = "the cat sat on the mat", "the cat sat on a mat"


def test_english_page_scores():
    s = m.page_scores(EN_PRED, EN_REF)
    # "the" -> "a" costs 3 edits; max(len) = 22.
    assert s["edit_distance"] == pytest.approx(3 / 22)
    # token sets: pred {the,cat,sat,on,mat} (5), ref {the,cat,sat,on,a,mat} (6), overlap 5.
    assert s["precision"] == pytest.approx(1.0)
    assert s["recall"] == pytest.approx(5 / 6)
    assert s["f1"] == pytest.approx(10 / 11)
    # BLEU: clipped n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (BP = 1): (1/12) ** (1/4).
    assert s["bleu"] == pytest.approx((1 / 12) ** 0.25)


def test_fox_compatible_swaps_precision_and_recall_only():
    right, fox = m.page_scores(EN_PRED, EN_REF), m.page_scores(EN_PRED, EN_REF, fox_compatible=True)
    assert (fox["precision"], fox["recall"]) == pytest.approx((5 / 6, 1.0))
    assert (fox["precision"], fox["recall"]) == pytest.approx((right["recall"], right["precision"]))
    assert fox["f1"] == pytest.approx(right["f1"]) and fox["edit_distance"] == pytest.approx(right["edit_distance"])


def test_chinese_uses_jieba_words_and_characters():
    s = m.page_scores("我爱北京", "我爱北京天安门")
    # jieba: [我, 爱, 北京] vs [我, 爱, 北京, 天安门] -> P = 1, R = 3/4, F1 = 6/7.
    assert m.tokenize_pair("我爱北京", "我爱北京天安门") == (["我", "爱", "北京"], ["我", "爱", "北京", "天安门"])
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((1.0, 3 / 4, 6 / 7))
    assert s["edit_distance"] == pytest.approx(3 / 7)  # three characters missing out of seven
    # characters: 4 of 7 found -> P = 1, R = 4/7, F1 = 8/11.
    assert (s["char_precision"], s["char_recall"], s["char_f1"]) == pytest.approx((1.0, 4 / 7, 8 / 11))
    # one Chinese character on either side switches both sides to jieba (whitespace is a token there)
    assert m.tokenize_pair("a b", "中") == (["a", " ", "b"], ["中"])


def test_empty_prediction_reference_and_both():
    for pred, ref in (("", "hello world"), ("hello", "")):
        s = m.page_scores(pred, ref)
        assert s["edit_distance"] == 1.0
        assert all(s[k] == 0.0 for k in ("f1", "precision", "recall", "bleu", "meteor", "char_f1")), s
    both = m.page_scores("  ", "")  # whitespace only is empty after normalisation
    assert both["edit_distance"] == 0.0 and both["f1"] == 1.0 and both["bleu"] == 1.0 and both["meteor"] == 1.0


def test_unicode_normalization_nfkc():
    pred = "ｆｕｌｌ\u3000ｗｉｄｔｈ ﬁne cafe\u0301"  # full-width letters and space, a ligature, decomposed é
    ref = "full width fine café"
    assert m.normalized_edit_distance(pred, ref) > 0.5  # the raw strings differ a lot...
    s = m.page_scores(pred, ref)
    assert s["edit_distance"] == 0.0 and s["f1"] == 1.0 and s["char_f1"] == 1.0  # ...NFKC makes them equal


@pytest.mark.slow  # loads WordNet: ~4 s on 2 cores
def test_meteor_with_and_without_wordnet(tmp_path, monkeypatch):
    pred, ref = ["he", "is", "quick"], ["he", "is", "fast"]
    # exact/stem only: 2 of 3 matched -> P = R = 2/3; 1 chunk / 2 matches -> penalty 0.5 * (1/2)^3 = 1/16
    assert m.meteor(pred, ref, wordnet=None) == pytest.approx(2 / 3 * (1 - 1 / 16))
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path), *nltk.data.path])  # nltk reads only its data dirs
    with pytest.warns(UserWarning, match="multilingual"):  # no Open Multilingual Wordnet: not needed
        wordnet = WordNetCorpusReader(str(install_wordnet(tmp_path)), None)
    # "quick" ~ "fast" in WordNet: 3 of 3, 1 chunk -> penalty 0.5 * (1/3)^3
    assert m.meteor(pred, ref, wordnet=wordnet) == pytest.approx(1 - 0.5 / 27)


def test_install_wordnet_is_idempotent(tmp_path):
    dest = install_wordnet(tmp_path)
    lexnames = (dest / "lexnames").read_text().splitlines()
    assert len(lexnames) == 45 and lexnames[44].split() == ["44", "adj.ppl", "3"]
    assert not any(p.is_symlink() for p in dest.iterdir())
    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    install_wordnet(tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == before


def test_anls():
    assert m.anls("helo", ["hello", "xyz"]) == pytest.approx(0.8)  # 1 edit / 5 -> 1 - 0.2
    assert m.anls("  Hello   WORLD ", "hello world") == 1.0  # case and spaces do not count
    assert m.anls("ab", ["ac"]) == 0.0  # NL = 0.5 is not below the threshold
    assert m.anls("", ["x"]) == 0.0


def test_relaxed_accuracy():
    assert m.relaxed_accuracy("10.4", "10") == 1.0  # 4% off
    assert m.relaxed_accuracy("10.6", "10") == 0.0  # 6% off
    assert m.relaxed_accuracy("5%", "0.05") == 1.0  # percent read as a fraction
    assert m.relaxed_accuracy("Yes", ["no", "yes"]) == 1.0
    assert m.relaxed_accuracy("0.0", "0") == 0.0  # zero target: exact string match only
    assert m.relaxed_accuracy("blue", "red") == 0.0


MD = (
    "Intro text \\(x^2\\) more.\n\n\\[E=mc^2\\]\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
    "End $$y=1$$ here.\n\\begin{tabular}{cc} $a$ & b \\end{tabular}"
)


def test_split_markdown():
    parts = m.split_markdown(MD)
    assert parts.text == "Intro text more.\n\nEnd here."
    assert parts.formula == "x^2\nE=mc^2\ny=1"
    assert parts.table == "| a | b |\n|---|---|\n| 1 | 2 |\n\n\\begin{tabular}{cc} $a$ & b \\end{tabular}"


def test_markdown_scores_by_part():
    pred = "Intro text more.\n\nEnd here."  # all the text, no formula, no table
    s = m.markdown_scores(pred, MD)
    assert s["text/edit_distance"] == 0.0 and s["text/f1"] == 1.0
    assert s["formula/f1"] == 0.0 and s["table/edit_distance"] == 1.0
    assert s["edit_distance"] > 0.3  # the whole page misses a lot
    plain = m.markdown_scores("just text", "just text")
    assert "formula/f1" not in plain and "table/f1" not in plain and plain["text/f1"] == 1.0


def test_score_dispatch_and_unknown_metric():
    assert m.score("anls", "Hello", ["hello"]) == {"anls": 1.0}
    assert m.score("page", "a b", ["a b", "zzz"])["f1"] == 1.0  # a page compares with its first reference
    with pytest.raises(ValueError, match="unknown metric 'bleu4'"):
        m.score("bleu4", "a", "a")
