"""Chinese readings re-ranked in context: the reading head's runner-up characters, chosen by a bigram model.

Where the head misreads one CJK glyph for another, the right character is its second candidate a third of the
time and among its first five half of the time (research/reader/zh_candidates.py). A character bigram model picks
among them in context: per run of CJK glyphs in a row, the sequence that maximises the head's log-probability
of each glyph (its frames' probabilities summed, as the decoding ranks them) plus `weight` times the bigram
log-probability (a Viterbi search over the candidates). The bigrams come from jieba's dictionary (349,046 words of
modern Chinese with their frequencies; jieba is a dependency already), each word of two or more characters
counted by the log of its frequency: general text statistics, not our prose's.
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Iterable
from pathlib import Path

import torch

from vary.modeling.conv_vocab import char_token_ids, ideograph, run_end

TOP = 5  # candidates per glyph: the right character is among the head's first five in 53% of its CJK misreads


class CharBigrams:
    """Weighted character and character-pair counts with an interpolated bigram probability."""

    def __init__(self, unigrams: dict[str, float], bigrams: dict[str, float], smoothing: float = 1.0):
        self.unigrams, self.bigrams, self.smoothing = unigrams, bigrams, smoothing
        self.total = sum(unigrams.values())

    @classmethod
    def from_words(cls, words: Iterable[tuple[str, float]]) -> CharBigrams:
        unigrams: collections.Counter[str] = collections.Counter()
        bigrams: collections.Counter[str] = collections.Counter()
        for word, weight in words:
            for a, b in zip(word, word[1:], strict=False):
                bigrams[a + b] += weight
            for a in word:
                unigrams[a] += weight
        return cls(dict(unigrams), dict(bigrams))

    @classmethod
    @functools.cache
    def from_jieba(cls) -> CharBigrams:
        """From jieba's dictionary (~1 s, once per process)."""
        import jieba

        words = []
        with open(Path(jieba.__file__).parent / "dict.txt", encoding="utf-8") as f:
            for line in f:
                word, count, *_ = line.split(" ")
                if len(word) > 1:
                    words.append((word, math.log1p(int(count))))
        return cls.from_words(words)

    def log_prob(self, before: str | None, char: str) -> float:
        """log P(char | before), the bigram's count interpolated with the character's own share; P(char) alone
        where nothing comes before."""
        alone = (self.unigrams.get(char, 0.0) + 0.5) / (self.total + 0.5 * max(len(self.unigrams), 1))
        if before is None:
            return math.log(alone)
        pair = self.bigrams.get(before + char, 0.0)
        return math.log((pair + self.smoothing * alone) / (self.unigrams.get(before, 0.0) + self.smoothing))


class ChineseReranker:
    """CharBigrams bound to a tokenizer's single CJK-character tokens, re-ranking the head's rows
    (conv_vocab.greedy_rows' (row, ids, confidence, start frames)) against the frames they were read from."""

    def __init__(self, tokenizer, vocab_size: int, weight: float, bigrams: CharBigrams | None = None, top: int = TOP):
        self.weight, self.top, self._bigrams = weight, top, bigrams
        # ideographs only: punctuation ends a run (jieba's words hold none: its share would push a comma out)
        self.char_of = char_token_ids(tokenizer, vocab_size, ideograph)

    @property
    def bigrams(self) -> CharBigrams:
        """The bigrams given, else jieba's, built when the first CJK glyph is read (~1 s)."""
        if self._bigrams is None:
            self._bigrams = CharBigrams.from_jieba()
        return self._bigrams

    def rerank_row(self, row: tuple, probs: torch.Tensor, blank: int) -> tuple:
        """One row read from `probs` (F, V), each run of CJK glyphs read as the likeliest sequence of their
        candidates under the head and the bigrams; the frames stay (one character per glyph)."""
        r, ids, conf, frames = row[:4]
        ids = list(ids)
        best = None
        k = 0
        while k < len(ids):
            if ids[k] not in self.char_of:
                k += 1
                continue
            end = k
            while end < len(ids) and ids[end] in self.char_of:
                end += 1
            best = probs.argmax(-1) if best is None else best
            candidates = [self._candidates(probs, best, blank, frames[g], ids[g]) for g in range(k, end)]
            ids[k:end] = self._viterbi(candidates)
            k = end
        return (r, ids, conf, list(frames), *row[4:])

    def _candidates(self, probs: torch.Tensor, best: torch.Tensor, blank: int, start: int, read: int) -> list:
        """(id, log-probability) of a glyph's first `top` CJK characters, its frames' probabilities summed from
        `start` to the next blank frame (as conv_vocab.read_runs ranks them)."""
        summed = probs[start : run_end(best, blank, start + 1, best.shape[0])].sum(0)
        values, indices = (summed / summed.sum()).topk(self.top)
        found = [(int(i), math.log(max(float(p), 1e-9))) for p, i in zip(values, indices, strict=True)
                 if int(i) in self.char_of]  # fmt: skip
        return found or [(read, 0.0)]

    def _viterbi(self, candidates: list[list[tuple[int, float]]]) -> list[int]:
        lp, w, char = self.bigrams.log_prob, self.weight, self.char_of
        paths = {c: (seen + w * lp(None, char[c]), [c]) for c, seen in candidates[0]}
        for glyph in candidates[1:]:
            step = {}
            for c, seen in glyph:
                before, (score, path) = max(paths.items(), key=lambda kv: kv[1][0] + w * lp(char[kv[0]], char[c]))
                step[c] = (score + w * lp(char[before], char[c]) + seen, [*path, c])
            paths = step
        return max(paths.values(), key=lambda sp: sp[0])[1]
