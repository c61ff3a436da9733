"""Offline text for the synthetic generators: English and Chinese words, sentences, paragraphs, titles.

Two back-ends behind one class:
- built-in (no corpus folder): English words from Faker's en_US word list mixed with names, places and
  numbers; Chinese words drawn from jieba's 349k-word frequency dictionary (frequency^0.75, so common
  characters dominate but rare ones appear), mixed with Faker zh_CN names and places. Faker's own zh
  word list has only 346 words, too few to cover the characters a Chinese OCR model must learn.
- a user corpus: every .txt file under `corpus_dir` (sorted), split into sentences; paragraphs are runs
  of consecutive sentences, so the text stays natural.

Every method takes the caller's `random.Random` and draws all randomness from it, so the same rng state
always gives the same text, whichever process runs it.
"""

from __future__ import annotations

import functools
import itertools
import random
import re
from pathlib import Path

from faker import Faker

LANGS = ("en", "zh")
_CJK_WORD = re.compile(r"[\u4e00-\u9fff]+")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s*")


@functools.cache
def get_faker(locale: str) -> Faker:
    """One Faker per locale and process (building one costs ~30 ms); re-seeded on every use."""
    return Faker(locale)


@functools.cache
def _jieba_dictionary() -> tuple[tuple[str, int], ...]:
    """(word, frequency) of every pure-CJK entry of jieba's dictionary, in file order (read once)."""
    import jieba

    entries = []
    with Path(jieba.__file__).with_name("dict.txt").open(encoding="utf-8") as f:
        for line in f:
            word, freq, _ = line.split(" ", 2)
            if _CJK_WORD.fullmatch(word):
                entries.append((word, int(freq)))
    return tuple(entries)


@functools.cache
def _zh_vocabulary() -> tuple[list[str], list[float]]:
    """Chinese words and cumulative weights (frequency^0.75) from jieba's dictionary."""
    words, cum, total = [], [], 0.0
    for word, freq in _jieba_dictionary():
        total += freq**0.75
        words.append(word)
        cum.append(total)
    return words, cum


@functools.cache
def common_chars(n: int) -> frozenset[str]:
    """The n most frequent Chinese characters, by their summed word frequencies in jieba's dictionary."""
    counts: dict[str, int] = {}
    for word, freq in _jieba_dictionary():
        for ch in word:
            counts[ch] = counts.get(ch, 0) + freq
    return frozenset(sorted(counts, key=lambda c: (-counts[c], c))[:n])


@functools.cache
def _zh_vocabulary_within(n_chars: int) -> tuple[list[str], list[float]]:
    """_zh_vocabulary() restricted to words written only with the n_chars most frequent characters."""
    allowed = common_chars(n_chars)
    words, cum = _zh_vocabulary()
    kept, kept_cum, total, prev = [], [], 0.0, 0.0
    for word, c in zip(words, cum, strict=True):
        if all(ch in allowed for ch in word):
            total += c - prev
            kept.append(word)
            kept_cum.append(total)
        prev = c
    return kept, kept_cum


@functools.lru_cache(maxsize=8)
def _load_corpus(corpus_dir: Path, lang: str) -> tuple[list[str], list[str]]:
    """(sentences, words) of every .txt file under corpus_dir, in sorted file order."""
    if not corpus_dir.is_dir():
        raise FileNotFoundError(f"corpus folder {corpus_dir} does not exist")
    files = sorted(corpus_dir.rglob("*.txt"))
    text = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    sentences = [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if len(s.strip()) > 1]
    if lang == "zh":
        import jieba

        jieba.setLogLevel(60)  # silence "Building prefix dict..." on stderr
        words = [w for w in jieba.lcut("".join(sentences)) if w.strip()]
    else:
        words = text.split()
    if not sentences or not words:
        raise ValueError(f"corpus folder {corpus_dir} has no usable text in its .txt files ({len(files)} found)")
    return sentences, words


class TextCorpus:
    """Words, sentences, paragraphs and titles in `lang` ("en" or "zh").

    zh_chars: write Chinese only with the N most frequent characters (and no Faker names or places, whose
    characters are often rare); a small model can then learn every character it will be asked to read.
    """

    def __init__(self, lang: str, corpus_dir: Path | None = None, zh_chars: int | None = None):
        if lang not in LANGS:
            raise ValueError(f"TextCorpus: lang must be one of {LANGS}, got {lang!r}")
        if zh_chars is not None and (corpus_dir is not None or int(zh_chars) < 100):
            raise ValueError("TextCorpus: zh_chars needs the built-in vocabulary and at least 100 characters")
        self.lang = lang
        self.zh_chars = int(zh_chars) if zh_chars is not None else None
        self.corpus_dir = Path(corpus_dir) if corpus_dir is not None else None
        if self.corpus_dir is not None:
            _load_corpus(self.corpus_dir, lang)  # fail early on a bad folder

    # ---- public API -------------------------------------------------------------------------------
    def words(self, rng: random.Random, n: int) -> list[str]:
        """n words (Chinese words are multi-character tokens, not single characters)."""
        if self.corpus_dir is not None:
            corpus_words = _load_corpus(self.corpus_dir, self.lang)[1]
            start = rng.randrange(len(corpus_words))
            return list(itertools.islice(itertools.cycle(corpus_words[start:] + corpus_words[:start]), n))
        if self.lang == "zh":
            words, cum = _zh_vocabulary_within(self.zh_chars) if self.zh_chars else _zh_vocabulary()
            return rng.choices(words, cum_weights=cum, k=n)
        fake = self._seeded("en_US", rng)
        return [self._en_token(rng, fake) for _ in range(n)]

    def sentence(self, rng: random.Random) -> str:
        if self.corpus_dir is not None:
            return rng.choice(_load_corpus(self.corpus_dir, self.lang)[0])
        return self._zh_sentence(rng) if self.lang == "zh" else self._en_sentence(rng)

    def paragraph(self, rng: random.Random, n_sentences: int) -> str:
        if self.corpus_dir is not None:
            sentences = _load_corpus(self.corpus_dir, self.lang)[0]
            start = rng.randrange(len(sentences))
            picked = [sentences[(start + i) % len(sentences)] for i in range(n_sentences)]
        else:
            picked = [self.sentence(rng) for _ in range(n_sentences)]
        return ("" if self.lang == "zh" else " ").join(picked)

    def title(self, rng: random.Random) -> str:
        if self.lang == "zh":
            return "".join(self.words(rng, rng.randint(2, 5)))
        words = self.words(rng, rng.randint(2, 7))
        small = {"a", "an", "and", "of", "the", "in", "on", "for", "to", "with"}
        return " ".join(w if (i and w.lower() in small) else w[:1].upper() + w[1:] for i, w in enumerate(words))

    # ---- built-in generators ----------------------------------------------------------------------
    @staticmethod
    def _seeded(locale: str, rng: random.Random) -> Faker:
        fake = get_faker(locale)
        fake.seed_instance(rng.getrandbits(32))
        return fake

    @staticmethod
    def _en_token(rng: random.Random, fake: Faker) -> str:
        r = rng.random()
        if r < 0.86:
            return fake.word()
        if r < 0.92:
            return fake.last_name() if r < 0.89 else fake.city()
        if r < 0.96:
            return str(rng.choice([rng.randint(0, 100), rng.randint(1900, 2030), rng.randint(100, 99999)]))
        return rng.choice([f"{rng.uniform(0, 100):.1f}%", f"${rng.randint(1, 9999)}", f"{rng.uniform(0, 10):.2f}"])

    def _en_sentence(self, rng: random.Random) -> str:
        fake = self._seeded("en_US", rng)
        n = rng.randint(5, 22)
        words = [self._en_token(rng, fake) for _ in range(n)]
        for i in range(2, n - 2):
            if rng.random() < 0.07:
                words[i] += rng.choice([",", ",", ",", ";", ":"])
        words[0] = words[0][:1].upper() + words[0][1:]
        return " ".join(words) + rng.choices([".", "?", "!"], weights=[90, 6, 4])[0]

    def _zh_sentence(self, rng: random.Random) -> str:
        n = rng.randint(6, 24)
        words = self.words(rng, n)
        fake = None
        for i in range(n):
            r = rng.random()
            if r < 0.03 and not self.zh_chars:
                fake = fake or self._seeded("zh_CN", rng)
                words[i] = fake.name() if r < 0.015 else fake.city()
            elif r < 0.05:
                words[i] = str(rng.choice([rng.randint(1, 100), rng.randint(1949, 2030), rng.randint(100, 99999)]))
            elif 1 < i < n - 2 and rng.random() < 0.12:
                words[i] += rng.choice(["，", "，", "，", "、", "；"])
        return "".join(words) + rng.choices(["。", "？", "！"], weights=[90, 6, 4])[0]


# TeX's special characters as text-mode commands (tables' LaTeX targets and the latex source's blocks).
_TEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Text -> LaTeX source that prints it (special characters escaped)."""
    return "".join(_TEX_SPECIALS.get(ch, ch) for ch in text)
