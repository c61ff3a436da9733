"""A word list for the reading head: misread English words put right where the image agrees.

The head names each glyph on its own, so one misread letter makes a word no reader would write ("Programns",
"Systen", "folows"), and nothing in per-glyph decoding knows better. Word lists have corrected OCR since the
first recognisers (lexicon-driven decoding); here a word the head read that is not in the list is compared with
the listed words one or two edits away (rapidfuzz finds them), each scored by the head itself over the word's frames
(CTC's negative log-likelihood: all the ways the frames can spell it, torch's ctc_loss), and replaced by the
likeliest of them when that costs less than `nats` more than the reading did. The image decides: a word the
frames do not support stays as read, and so do listed words, numbers and every other script.

The list is built from the training partition of the real prose (`vary.data.prose`: passages never held out),
one `word count` line per lowercase word (`lexicon.txt` in a model folder; `vary data lexicon`).
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from vary.modeling.char_bigrams import ChineseReranker
from vary.modeling.conv_vocab import char_token_ids, run_end

LEXICON_FILE = "lexicon.txt"
WORD = re.compile(r"[A-Za-z]+")
# Words shorter than this are left alone (a two-letter word has many listed neighbours one edit away: is, as, it,
# in, ...); words of TWO_EDITS_FROM letters or more are compared with the listed words up to two edits away, shorter
# ones with those one edit away. Dev sets (English prose ED / chart values, 8 nats): 4 letters and one edit 0.0221
# / 0.707; 3 letters 0.0216 / 0.710; 3 letters, two edits from 8 letters 0.0210 / 0.710, from 6 0.0206, from 5
# 0.0198 / 0.714, from 4 the same.
MIN_LENGTH = 3
TWO_EDITS_FROM = 5
WORD_GAP = 2.5  # see word_spans: a space is about one glyph wide, so the next glyph starts two steps later
MIN_COUNT = 2  # a word seen once in the prose is as likely a typo or a fragment of code as a word


class Lexicon:
    """Lowercase words and how often the prose used them."""

    def __init__(self, counts: dict[str, int]):
        self.counts = counts
        self._words = list(counts)

    def __len__(self) -> int:
        return len(self.counts)

    def __contains__(self, word: str) -> bool:
        return word.lower() in self.counts

    @classmethod
    def from_texts(cls, texts: Iterable[str], min_count: int = MIN_COUNT) -> Lexicon:
        counts = collections.Counter(word.lower() for text in texts for word in WORD.findall(text))
        return cls({word: n for word, n in counts.most_common() if n >= min_count})

    @classmethod
    def from_file(cls, path: str | Path) -> Lexicon:
        """Read a `word count` file (`save`); ValueError naming the file and line where it is not one."""
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not a word list (not UTF-8 text: {err.reason})") from None
        counts = {}
        for number, line in enumerate(lines, 1):
            word, _, n = line.partition(" ")
            if not word:
                continue
            if not (n or "1").isdigit():
                raise ValueError(f"{path}:{number}: not a word list line ('word count'): {line[:60]!r}")
            counts[word] = int(n or 1)
        return cls(counts)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text("".join(f"{word} {n}\n" for word, n in self.counts.items()), encoding="utf-8")
        return path

    def neighbours(self, word: str, edits: int = 1, limit: int = 32) -> list[str]:
        """The listed words at most `edits` edits from `word` (lowercase), nearest first."""
        found = process.extract(word.lower(), self._words, scorer=Levenshtein.distance, score_cutoff=edits,
                                limit=limit)  # fmt: skip
        return [match for match, _, _ in found]


def case_forms(word: str) -> list[str]:
    """A lowercase word as it may be printed: as is, capitalised, upper case."""
    return list(dict.fromkeys((word, word.capitalize(), word.upper())))


class LexiconReader:
    """A Lexicon bound to a tokenizer's single-character tokens, correcting the reading head's rows
    (conv_vocab.greedy_rows' (row, ids, confidence, start frames)) against the frames they were read from."""

    def __init__(self, lexicon: Lexicon, tokenizer, vocab_size: int, nats: float, min_length: int = MIN_LENGTH,
                 two_edits_from: int = TWO_EDITS_FROM, chinese: ChineseReranker | None = None):  # fmt: skip
        self.lexicon, self.nats, self.min_length, self.two_edits_from = lexicon, nats, min_length, two_edits_from
        self.chinese = chinese  # re-ranks the CJK glyphs first (vary.modeling.char_bigrams)
        self.char_of = char_token_ids(tokenizer, vocab_size, lambda char: char.isascii() and char.isalpha())
        self.id_of = {char: i for i, char in self.char_of.items()}

    def correct_rows(self, rows: list[tuple], probs: torch.Tensor, blank: int) -> list[tuple]:
        """`rows` of one image read from `probs` (R, F, V), each word corrected (`correct_word`)."""
        return [self.correct_row(row, probs[row[0]], blank) for row in rows]

    def correct_row(self, row: tuple, probs: torch.Tensor, blank: int) -> tuple:
        """One row read from `probs` (F, V), its unlisted words corrected; a replaced word's glyphs get start
        frames spread over the frames the word's glyphs started at. With `chinese`, its CJK glyphs re-ranked
        first."""
        if self.chinese is not None:
            row = self.chinese.rerank_row(row, probs, blank)
        r, ids, conf, frames = row[:4]
        ids, frames = list(ids), list(frames)
        spans = [span for span in word_spans(ids, frames, self.char_of) if span[1] - span[0] >= self.min_length]
        best = None  # the row's best path, computed for the first word that needs it
        for i, j in reversed(spans):  # right to left: a replaced word's new length moves no span still to come
            word = "".join(self.char_of[k] for k in ids[i:j])
            if word in self.lexicon:
                continue
            best = probs.argmax(-1) if best is None else best
            start = run_end(best, blank, frames[i - 1], frames[i]) if i > 0 else 0  # past the glyph before
            end = frames[j] if j < len(ids) else len(best)
            if (new := self.correct_word(word, probs[start:end], blank)) is not None:
                ids[i:j] = [self.id_of[c] for c in new]
                frames[i:j] = _spread(frames[i], frames[j - 1], len(new))
        return (r, ids, conf, frames, *row[4:])

    def correct_word(self, word: str, probs: torch.Tensor, blank: int) -> str | None:
        """The listed word one edit from `word` (two from `two_edits_from` letters; in any of its case forms) that
        `probs` (T, V), the frames from the end of the glyph before it to the start of the one after, spell
        likeliest, when that costs under `nats` more than `word` itself; else None."""
        edits = 2 if len(word) >= self.two_edits_from else 1
        candidates = [form for near in self.lexicon.neighbours(word, edits) for form in case_forms(near)
                      if all(c in self.id_of for c in form)]  # fmt: skip
        if not candidates:
            return None
        spellings = [word, *candidates]
        nll = ctc_nll(probs, [[self.id_of[c] for c in s] for s in spellings], blank)
        k = int(nll[1:].argmin()) + 1
        return spellings[k] if float(nll[k] - nll[0]) < self.nats else None


def word_spans(ids: list[int], frames: list[int], char_of: dict[int, str]) -> list[tuple[int, int]]:
    """(start, end) of each word in a row's ids: a run of Latin letters, also cut where a lowercase letter is
    followed by a capital and where the next glyph starts more than WORD_GAP times the row's usual spacing after
    the last one. The head reads no space between two neighbouring bars' labels ("ComparePassed"), and a word
    must be one for its neighbours to be found."""
    steps = sorted(b - a for a, b in zip(frames, frames[1:], strict=False))
    gap = WORD_GAP * steps[len(steps) // 2] if steps else 0
    spans, start = [], None
    for k, i in enumerate(ids):
        letter = char_of.get(i)
        cut = start is not None and (
            letter is None or (char_of[ids[k - 1]].islower() and letter.isupper()) or frames[k] - frames[k - 1] > gap
        )
        if cut:
            spans.append((start, k))
            start = None
        if letter is not None and start is None:
            start = k
    if start is not None:
        spans.append((start, len(ids)))
    return spans


def ctc_nll(probs: torch.Tensor, spellings: list[list[int]], blank: int) -> torch.Tensor:
    """(len(spellings),) negative log-likelihood of each id sequence over the frames `probs` (T, V), summed over
    every CTC alignment (inf where the frames are too few to spell it)."""
    log_probs = probs.float().clamp_min(1e-9).log()[:, None].expand(-1, len(spellings), -1)
    lengths = torch.tensor([len(s) for s in spellings])
    targets = torch.zeros(len(spellings), int(lengths.max()), dtype=torch.long)
    for b, s in enumerate(spellings):
        targets[b, : len(s)] = torch.tensor(s)
    frames = torch.full((len(spellings),), probs.shape[0], dtype=torch.long)
    return F.ctc_loss(log_probs, targets, frames, lengths, blank=blank, reduction="none", zero_infinity=False)


def _spread(first: int, last: int, n: int) -> list[int]:
    """`n` start frames from `first` to `last`, evenly (the frames of a replaced word's glyphs)."""
    if n == 1:
        return [first]
    return [round(first + (last - first) * k / (n - 1)) for k in range(n)]
