"""The reading head's word list (vary.modeling.lexicon): misread words put right only where the frames agree."""

from __future__ import annotations

import math

import pytest
import torch

from vary.modeling.char_bigrams import CharBigrams, ChineseReranker
from vary.modeling.lexicon import Lexicon, LexiconReader, case_forms, ctc_nll

BLANK = 0
CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,"


class CharTokenizer:
    """The single-character vocabulary of a reading head: the blank (pad) first."""

    def get_vocab(self) -> dict[str, int]:
        return {"<pad>": BLANK, **{c: i + 1 for i, c in enumerate(CHARS)}}


VOCAB = CharTokenizer().get_vocab()


def frames_for(text: str, unsure: dict[int, tuple[str, float]] | None = None) -> torch.Tensor:
    """(T, V) probabilities of a row reading `text`: each glyph one frame (0.9 sure), a blank frame before and
    between glyphs. `unsure[k] = (other, p)`: glyph k's frame gives `other` probability p, taken from the glyph."""
    unsure = unsure or {}
    rows = []
    for k, c in enumerate(text):
        rows.append({BLANK: 0.95})
        glyph = {VOCAB[c]: 0.9}
        if k in unsure:
            other, p = unsure[k]
            glyph = {VOCAB[c]: 0.9 - p, VOCAB[other]: p}
        rows.append(glyph)
    rows.append({BLANK: 0.95})
    probs = torch.full((len(rows), len(VOCAB)), 1e-4)
    for f, frame in enumerate(rows):
        for i, p in frame.items():
            probs[f, i] = p
    return probs / probs.sum(-1, keepdim=True)


def row_reading(text: str, probs: torch.Tensor) -> tuple:
    """greedy_rows' tuple for a row read as `text` from frames_for's layout (glyph k at frame 2k + 1)."""
    return (3, [VOCAB[c] for c in text], 0.9, [2 * k + 1 for k in range(len(text))])


@pytest.fixture()
def reader() -> LexiconReader:
    lexicon = Lexicon.from_texts(["The system follows the system. Programs follow programs. Go to it."], min_count=1)
    return LexiconReader(lexicon, CharTokenizer(), len(VOCAB), nats=2.0)


def test_lexicon_counts_words_and_round_trips_through_its_file(tmp_path):
    lexicon = Lexicon.from_texts(["The cat, the dog.", "THE cat sat; a typo: teh"], min_count=2)
    assert lexicon.counts == {"the": 3, "cat": 2}
    assert "The" in lexicon and "CAT" in lexicon and "dog" not in lexicon
    again = Lexicon.from_file(lexicon.save(tmp_path / "lexicon.txt"))
    assert again.counts == lexicon.counts
    (tmp_path / "bad.txt").write_text("the 3\ncat many\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.txt:2: not a word list line"):
        Lexicon.from_file(tmp_path / "bad.txt")
    (tmp_path / "binary.txt").write_bytes(b"\xd5\xff\x00 3")
    with pytest.raises(ValueError, match=r"binary.txt: not a word list \(not UTF-8"):
        Lexicon.from_file(tmp_path / "binary.txt")
    assert sorted(Lexicon({"system": 2, "systems": 1, "stem": 1}).neighbours("Systen")) == ["system"]
    assert case_forms("word") == ["word", "Word", "WORD"]


def test_ctc_nll_prefers_the_spelling_the_frames_show():
    probs = frames_for("cat", {1: ("o", 0.3)})
    cat, cot, dog = ctc_nll(probs, [[VOCAB[c] for c in w] for w in ("cat", "cot", "dog")], BLANK).tolist()
    assert cat < cot < dog
    assert cot - cat == pytest.approx(math.log(0.6 / 0.3), abs=0.05)  # the one frame that differs
    too_long = ctc_nll(frames_for("a"), [[VOCAB["a"]] * 3], BLANK)  # a, blank, a, blank, a: 5 frames of 3
    assert math.isinf(float(too_long[0]))


def test_an_unlisted_word_becomes_the_listed_one_its_frames_nearly_spell(reader):
    probs = frames_for("Systen", {5: ("m", 0.3)})  # 'n' read, 'm' close behind
    row = reader.correct_row(row_reading("Systen", probs), probs, BLANK)
    assert "".join(CHARS[i - 1] for i in row[1]) == "System"
    assert row[0] == 3 and row[2] == 0.9 and row[3] == [1, 3, 5, 7, 9, 11]
    two = frames_for("Systan", {4: ("e", 0.3), 5: ("m", 0.3)})  # two letters off: from TWO_EDITS_FROM letters
    assert "".join(CHARS[i - 1] for i in reader.correct_row(row_reading("Systan", two), two, BLANK)[1]) == "System"
    short = frames_for("Thw", {2: ("e", 0.4)})  # three letters: one edit
    assert "".join(CHARS[i - 1] for i in reader.correct_row(row_reading("Thw", short), short, BLANK)[1]) == "The"
    two_short = frames_for("Tow", {1: ("h", 0.4), 2: ("e", 0.4)})
    assert reader.correct_row(row_reading("Tow", two_short), two_short, BLANK)[1] == row_reading("Tow", two_short)[1]


def test_a_word_stays_as_read_where_the_frames_disagree_or_it_is_listed_or_short(reader):
    sure = frames_for("Systen")  # 'm' at 1e-4 on the frame: log(0.9 / 1e-4) = 9 nats > 2
    assert reader.correct_row(row_reading("Systen", sure), sure, BLANK)[1] == row_reading("Systen", sure)[1]
    listed = frames_for("system", {5: ("s", 0.3)})
    assert reader.correct_row(row_reading("system", listed), listed, BLANK)[1] == row_reading("system", listed)[1]
    short = frames_for("Tp", {1: ("o", 0.4)})  # under MIN_LENGTH letters ("To" with 2)
    assert reader.correct_row(row_reading("Tp", short), short, BLANK)[1] == row_reading("Tp", short)[1]
    reader.min_length = 2
    assert reader.correct_row(row_reading("Tp", short), short, BLANK)[1] == row_reading("To", short)[1]


def test_a_stray_letter_goes_and_the_words_around_it_keep_their_frames(reader):
    text = "Programns now"  # a stray 'n', its frame nearly blank
    probs = frames_for(text, {7: ("<pad>", 0.35)})
    row = reader.correct_row(row_reading(text, probs), probs, BLANK)
    assert "".join(CHARS[i - 1] for i in row[1]) == "Programs now"
    assert row[3][:8] == [1, 3, 6, 8, 10, 12, 15, 17]  # 8 glyphs spread over the 9 read's frames 1 to 17
    assert row[3][8:] == [19, 21, 23, 25]  # " now" as read


# --- Chinese: the head's candidates re-ranked by character bigrams (vary.modeling.char_bigrams) -----------------
class CJKTokenizer:
    def get_vocab(self) -> dict[str, int]:
        return {"<pad>": BLANK, **{c: i + 1 for i, c in enumerate("中国人民天下大学猫a")}}


def cjk_frames(glyphs: list[dict[str, float]]) -> torch.Tensor:
    """(T, V): a blank frame, then each glyph's frame with its candidates' probabilities, then a blank."""
    vocab = CJKTokenizer().get_vocab()
    probs = torch.full((2 * len(glyphs) + 1, len(vocab)), 1e-4)
    probs[0::2, BLANK] = 0.95
    for k, glyph in enumerate(glyphs):
        for c, p in glyph.items():
            probs[2 * k + 1, vocab[c]] = p
    return probs / probs.sum(-1, keepdim=True)


def test_bigrams_from_words_prefer_the_pairs_they_saw():
    bigrams = CharBigrams.from_words([("中国", 3.0), ("人民", 2.0), ("国人", 1.0)])
    assert bigrams.unigrams["国"] == 4.0 and bigrams.bigrams["中国"] == 3.0
    assert bigrams.log_prob("中", "国") > bigrams.log_prob("中", "猫") > -math.inf
    assert bigrams.log_prob(None, "国") > bigrams.log_prob(None, "猫")  # unseen characters keep a small share


def test_a_cjk_glyph_becomes_the_runner_up_its_neighbours_make_likelier():
    bigrams = CharBigrams.from_words([("中国", 50.0), ("国人", 50.0), ("大学", 1.0)])
    vocab = CJKTokenizer().get_vocab()
    # "中猫人": the middle glyph read as 猫 (0.5), 国 close behind (0.4)
    probs = cjk_frames([{"中": 0.9}, {"猫": 0.5, "国": 0.4}, {"人": 0.9}])
    row = (2, [vocab[c] for c in "中猫人"], 0.8, [1, 3, 5])

    def reread(weight: float) -> str:
        reranker = ChineseReranker(CJKTokenizer(), len(vocab), weight, bigrams)
        r, ids, conf, frames = reranker.rerank_row(row, probs, BLANK)
        assert (r, conf, frames) == (2, 0.8, [1, 3, 5])  # one character per glyph: the frames stay
        return "".join({i: c for c, i in vocab.items()}[i] for i in ids)

    assert reread(0.0) == "中猫人"  # the head alone
    assert reread(1.0) == "中国人"
    sure = cjk_frames([{"中": 0.9}, {"猫": 0.9}, {"人": 0.9}])  # 猫 sure, 国 at 1e-4: read as it is
    assert ChineseReranker(CJKTokenizer(), len(vocab), 1.0, bigrams).rerank_row(row, sure, BLANK)[1] == row[1]
    latin = (0, [vocab["a"]], 0.9, [1])  # no CJK glyph: as read
    assert ChineseReranker(CJKTokenizer(), len(vocab), 1.0, bigrams).rerank_row(latin, probs, BLANK) == (
        *latin[:3],
        [1],
    )


def test_jiebas_dictionary_gives_the_default_bigrams():
    bigrams = CharBigrams.from_jieba()
    assert len(bigrams.unigrams) > 5000 and bigrams.log_prob("中", "国") > bigrams.log_prob("中", "猫") + 3
