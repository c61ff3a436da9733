"""Real prose for training and held-out evaluation: text the generators did not write.

Sources are Debian packages (installed by `scripts/setup.sh`):
- English: `fortunes` (quotations, jokes, poems: /usr/share/games/fortunes) and `python3-doc` (the Python
  documentation's HTML, paragraphs only: /usr/share/doc/python3/html).
- Chinese: `fortunes-zh` (Debian's code of conduct and sayings, 300 Tang poems, 100 Song poems).

Every passage (one fortune, one documentation paragraph) goes to exactly one partition, "train" or "heldout",
by a stable hash of its cleaned text: the same passage lands in the same partition on every machine and in
every process, whatever else the packages hold, so held-out text is never trained on. With held-out fonts
(`vary.data.fonts.HELDOUT_FONTS`) a held-out block is unseen in both text and face.

`ProseCorpus` is a `TextCorpus`, so the generators that take one (blocks) draw words, sentences and
paragraphs from it unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from html.parser import HTMLParser
from pathlib import Path

from vary.data.text import LANGS, TextCorpus

FORTUNES_DIR = Path("/usr/share/games/fortunes")
PYTHON_DOCS_DIR = Path("/usr/share/doc/python3/html")
SPLITS = ("train", "heldout")
HELDOUT_PERCENT = 10  # share of passages held out (by hash, so the share is approximate)

# fortune files per language (fortunes-zh's three; every other file of `fortunes` is English), and files that
# are pictures drawn with characters, not prose.
ZH_FORTUNES = ("chinese", "tang300", "song100")
_NOT_PROSE = ("art", "ascii-art")
_APT = {"fortunes": "fortunes", "zh": "fortunes-zh", "docs": "python3-doc"}

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # fortunes-zh colours titles and authors
_CJK = "\u3000-\u303f\u4e00-\u9fff\uff00-\uffef"
_CJK_BREAK = re.compile(rf"(?<=[{_CJK}])\s*\n\s*(?=[{_CJK}])")  # a line break inside Chinese text: no space
_SENTENCE_END = re.compile(r"(?<=[.!?。！？；])\s*")
MIN_CHARS = {"en": 20, "zh": 8}  # shorter passages are headings, signatures or code fragments


class ProseNotInstalledError(FileNotFoundError):
    pass


def clean(text: str, lang: str) -> str:
    """One passage -> one line: colour codes gone, line breaks joined (nothing between Chinese characters,
    one space elsewhere), runs of whitespace to one space."""
    text = _ANSI.sub("", text).replace("\t", " ")
    if lang == "zh":
        text = _CJK_BREAK.sub("", text)
    return " ".join(text.split())


def fortune_passages(path: Path) -> list[str]:
    """The fortunes of one strfile source: passages separated by lines holding only '%'."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return re.split(r"^%\s*$", text, flags=re.MULTILINE)


class _Paragraphs(HTMLParser):
    """Text of every <p> of a page (navigation, code blocks and tables are left out: not prose)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.depth, self.current, self.paragraphs = 0, [], []

    def handle_starttag(self, tag, attrs):
        if tag == "p":
            self.depth += 1

    def handle_endtag(self, tag):
        if tag == "p" and self.depth:
            self.depth -= 1
            if not self.depth:
                self.paragraphs.append("".join(self.current))
                self.current = []

    def handle_data(self, data):
        if self.depth:
            self.current.append(data)


def html_paragraphs(path: Path) -> list[str]:
    parser = _Paragraphs()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser.paragraphs


def _require(path: Path, package: str) -> None:
    if not path.is_dir():
        raise ProseNotInstalledError(
            f"real prose: {path} not found; install it with `apt-get install --no-install-recommends {package}` "
            "(or `bash scripts/setup.sh`)"
        )


def partition(passage: str) -> str:
    """'train' or 'heldout' for a cleaned passage, by a hash that is the same on every machine."""
    bucket = int.from_bytes(hashlib.blake2b(passage.encode("utf-8"), digest_size=8).digest(), "big") % 100
    return "heldout" if bucket < HELDOUT_PERCENT else "train"


@functools.lru_cache(maxsize=8)
def load_passages(lang: str, split: str, fortunes_dir: Path = FORTUNES_DIR,
                  docs_dir: Path | None = PYTHON_DOCS_DIR) -> tuple[str, ...]:  # fmt: skip
    """Cleaned passages of `lang` in partition `split`, deduplicated, in a fixed order (sorted files, then
    file order). docs_dir=None leaves the Python documentation out (English only)."""
    if lang not in LANGS or split not in SPLITS:
        raise ValueError(f"real prose: lang must be one of {LANGS} and split one of {SPLITS}, got {lang!r}, {split!r}")
    raw: list[str] = []
    if lang == "zh":
        _require(fortunes_dir, _APT["zh"])
        files = [fortunes_dir / name for name in ZH_FORTUNES if (fortunes_dir / name).is_file()]
        if not files:
            raise ProseNotInstalledError(
                f"real prose: no Chinese fortunes ({', '.join(ZH_FORTUNES)}) in {fortunes_dir}; install them with "
                f"`apt-get install --no-install-recommends {_APT['zh']}`"
            )
        for path in files:
            raw += fortune_passages(path)
    else:
        _require(fortunes_dir, _APT["fortunes"])
        skip = set(ZH_FORTUNES) | set(_NOT_PROSE)
        for path in sorted(fortunes_dir.iterdir()):
            if path.is_file() and not path.is_symlink() and path.suffix == "" and path.name not in skip:
                raw += fortune_passages(path)
        if docs_dir is not None:
            _require(docs_dir, _APT["docs"])
            for path in sorted(docs_dir.rglob("*.html")):
                raw += html_paragraphs(path)
    seen: dict[str, None] = {}
    for passage in raw:
        text = clean(passage, lang)
        if len(text) >= MIN_CHARS[lang] and partition(text) == split:
            seen.setdefault(text, None)
    if not seen:
        raise ValueError(f"real prose: no {lang} passages of at least {MIN_CHARS[lang]} characters in {split!r}")
    return tuple(seen)


class ProseCorpus(TextCorpus):
    """TextCorpus over real prose: a paragraph is consecutive sentences of one passage, a sentence one sentence
    of a passage, words a run of consecutive words (Chinese: characters) of a passage."""

    def __init__(self, lang: str, split: str = "train", fortunes_dir: Path | None = None,
                 docs_dir: Path | None = None):  # fmt: skip
        super().__init__(lang)
        self.split = split
        # module constants read here, not as defaults, so a test can point them at a small folder
        fortunes_dir, docs_dir = Path(fortunes_dir or FORTUNES_DIR), Path(docs_dir or PYTHON_DOCS_DIR)
        self.passages = load_passages(lang, split, fortunes_dir, docs_dir)

    def _sentences(self, rng: random.Random) -> list[str]:
        passage = rng.choice(self.passages)
        return [s for s in _SENTENCE_END.split(passage) if s.strip()] or [passage]

    def words(self, rng: random.Random, n: int) -> list[str]:
        tokens = list(rng.choice(self.passages)) if self.lang == "zh" else rng.choice(self.passages).split()
        tokens = [t for t in tokens if t.strip()]
        start = rng.randrange(max(1, len(tokens) - n + 1))
        return tokens[start : start + n]

    def sentence(self, rng: random.Random) -> str:
        return rng.choice(self._sentences(rng))

    def paragraph(self, rng: random.Random, n_sentences: int) -> str:
        sentences = self._sentences(rng)
        start = rng.randrange(max(1, len(sentences) - n_sentences + 1))
        return ("" if self.lang == "zh" else " ").join(sentences[start : start + n_sentences])


def text_source(generator: str, lang: str, text: str, split: str | None, corpus_dir: str | Path | None = None,
                zh_chars: int | None = None) -> tuple[TextCorpus, str | None]:  # fmt: skip
    """A generator's `text` and `split` options -> (its corpus, its split): "generator" text (the built-in
    word generator, or `corpus_dir`'s files) or "prose" (this module, the split's passages; split defaults to
    "train" so held-out text is only drawn on request). The split also chooses the faces (find_fonts)."""
    if text not in ("generator", "prose"):
        raise ValueError(f"{generator}: text must be 'generator' or 'prose', got {text!r}")
    split = None if split in (None, "", "none") else split
    if split not in (None, *SPLITS):
        raise ValueError(f"{generator}: split must be one of {', '.join(SPLITS)}, got {split!r}")
    if text == "generator":
        return TextCorpus(lang, Path(corpus_dir) if corpus_dir else None, zh_chars=zh_chars), split
    if corpus_dir or zh_chars:
        raise ValueError(f"{generator}: text=prose draws its own text; it excludes corpus_dir= and zh_chars=")
    return ProseCorpus(lang, split or "train"), split or "train"
