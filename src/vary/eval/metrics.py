"""The metrics of the Vary paper's tables, computed as the Fox/GOT page-OCR scripts compute them.

Page OCR (Table 1 of the paper; Fox `eval_tools/eval_ocr_test.py`, GOT's evaluation):
  * normalized edit distance = character Levenshtein distance / max(len(pred), len(ref))  (lower is better);
  * precision / recall / F1 over the *sets* of tokens (`nltk.metrics` precision, recall, f_measure);
    tokens are whitespace words, or jieba words whenever either side contains a Chinese character;
  * BLEU (`nltk.translate.bleu`, 4-gram, unsmoothed) and METEOR (`nltk`'s meteor_score) on the same tokens;
  * extra: character-level precision / recall / F1 (multiset of non-space characters), the fairer view for
    Chinese where jieba's segmentation of a misread sentence changes many "words" at once.
DocVQA: ANLS (threshold 0.5, best over the reference answers). ChartQA: relaxed accuracy (5% relative
tolerance for numbers, case-insensitive exact match otherwise).
Markdown pages are also scored on their text, formula and table parts separately (`split_markdown`).
Our data engine's own tasks (not in the paper's tables):
  * natural photos ("nature"): nature_accuracy = 1 if the output is one of the paper's five nature sentences
    (`vary.prompts.NATURE_SENTENCES`, any of them), compared case-insensitively, whitespace runs collapsed,
    trailing punctuation ignored;
  * charts -> python-dict ("chart"): chart_parses (the output is a dict literal `parse_chart_answer` reads),
    chart_match (same categories and series as the reference, every number equal within 1e-6 relative;
    the title is not compared) and chart_value_accuracy (the fraction of the reference's numbers the output
    has under the same series and category).

Conventions, all deliberate:
  * Argument roles. Every function takes (prediction, reference). The public Fox and GOT scripts call
    `cal_per_metrics(pred, gt)` with (label, answer), i.e. the roles swapped, so their "precision" is the
    true recall and their BLEU/METEOR score the reference against the prediction (edit distance and F1 are
    symmetric and unaffected). `fox_compatible=True` reproduces that swap, for setting numbers beside their
    published tables; the default computes the metrics the right way round.
  * Unicode. Both sides are NFKC-normalised and stripped of surrounding whitespace before scoring, so a
    full-width "Ａ" equals "A", a ligature "ﬁ" equals "fi", and decomposed "é" equals composed "é". NFKC also
    maps full-width punctuation (，：？) to ASCII on *both* sides, so it never creates a mismatch.
  * Empty text. Both sides empty: a perfect score (a blank page read as blank). Exactly one side empty:
    every score is 0 (edit distance 1). nltk returns None for the undefined precision/recall; we report 0.
  * METEOR uses WordNet synonyms when the WordNet corpus is installed (`python -m vary.eval.nltk_data`),
    otherwise exact + Porter-stem matching only; `meteor_mode()` says which, and the report prints it.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

import jieba
import nltk
from nltk.metrics import f_measure, precision, recall
from nltk.translate import meteor_score as nltk_meteor
from rapidfuzz.distance import Levenshtein

from vary.chart_answer import parse_chart_answer
from vary.prompts import NATURE_SENTENCES

jieba.setLogLevel(logging.WARNING)  # jieba logs "Building prefix dict..." on first use

# The test the Fox/GOT scripts use to switch to jieba (CJK Unified Ideographs, basic block), verbatim.
CHINESE_RE = re.compile(r"[\u4e00-\u9fa5]")

PAGE_METRICS = ("edit_distance", "f1", "precision", "recall", "bleu", "meteor", "char_f1")
MARKDOWN_PARTS = ("text", "formula", "table")


# --- text preparation --------------------------------------------------------------------------------
def normalize(text: str) -> str:
    """NFKC + strip: the one normalisation applied to both sides of every comparison."""
    return unicodedata.normalize("NFKC", text).strip()


def contains_chinese(text: str) -> bool:
    return CHINESE_RE.search(text) is not None


def tokenize_pair(prediction: str, reference: str) -> tuple[list[str], list[str]]:
    """Tokens as Fox/GOT make them: jieba for both sides if either has Chinese, else whitespace split.

    jieba.lcut keeps whitespace runs as tokens (" ", "\\n"); kept as is, to score like the public scripts.
    """
    if contains_chinese(prediction) or contains_chinese(reference):
        return jieba.lcut(prediction), jieba.lcut(reference)
    return prediction.split(), reference.split()


# --- single metrics (prediction first, reference second) ---------------------------------------------
def normalized_edit_distance(prediction: str, reference: str) -> float:
    """Character Levenshtein distance / max(len); 0.0 when both are empty."""
    longest = max(len(prediction), len(reference))
    return Levenshtein.distance(prediction, reference) / longest if longest else 0.0


def set_precision_recall_f1(pred_tokens: list[str], ref_tokens: list[str]) -> tuple[float, float, float]:
    """nltk's set-based scores: precision = |P∩R|/|P|, recall = |P∩R|/|R|; undefined (None) -> 0."""
    pred, ref = set(pred_tokens), set(ref_tokens)
    if not pred and not ref:
        return 1.0, 1.0, 1.0
    p, r, f = precision(ref, pred), recall(ref, pred), f_measure(ref, pred)
    return float(p or 0.0), float(r or 0.0), float(f or 0.0)


def char_precision_recall_f1(prediction: str, reference: str) -> tuple[float, float, float]:
    """Bag-of-characters scores, whitespace ignored. A multiset, not a set: a page's 1,000 characters
    hold only a few hundred distinct ones, so a set would hide most omissions."""
    pred = Counter(c for c in prediction if not c.isspace())
    ref = Counter(c for c in reference if not c.isspace())
    if not pred and not ref:
        return 1.0, 1.0, 1.0
    overlap = sum((pred & ref).values())
    if overlap == 0:
        return 0.0, 0.0, 0.0
    p, r = overlap / sum(pred.values()), overlap / sum(ref.values())
    return p, r, 2 * p * r / (p + r)


def bleu(pred_tokens: list[str], ref_tokens: list[str]) -> float:
    """nltk's sentence BLEU (uniform 1-4-gram weights, no smoothing), as the Fox/GOT scripts call it."""
    if not pred_tokens and not ref_tokens:
        return 1.0
    if not pred_tokens or not ref_tokens:
        return 0.0
    with warnings.catch_warnings():  # nltk warns on every zero n-gram count (short texts); the score is 0
        warnings.simplefilter("ignore")
        return float(nltk.translate.bleu([ref_tokens], pred_tokens))


class _NoSynonyms:
    """Stands in for WordNet when it is not installed: METEOR then matches exact words and stems only."""

    def synsets(self, *args, **kwargs) -> list:
        return []


@functools.cache
def _wordnet():
    """nltk's WordNet reader if its data can be loaded, else None (checked once per process)."""
    from nltk.corpus import wordnet

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wordnet.ensure_loaded()
        return wordnet
    except LookupError:
        return None


def meteor_mode() -> str:
    """'wordnet' (exact + stem + synonym matching) or 'exact+stem' (WordNet data not installed)."""
    return "wordnet" if _wordnet() is not None else "exact+stem"


def meteor(pred_tokens: list[str], ref_tokens: list[str], wordnet: Any = "auto") -> float:
    """nltk's METEOR. wordnet="auto": WordNet synonyms when installed; None: exact + stem matching only;
    or a WordNetCorpusReader to use. (nltk looks synonyms up on Porter stems, so e.g. "quick"/"fast"
    match through WordNet but "automobile"/"car" do not: nltk's behaviour, kept for comparability.)"""
    if not pred_tokens and not ref_tokens:
        return 1.0
    if wordnet == "auto":
        wordnet = _wordnet()
    return float(nltk_meteor.meteor_score([ref_tokens], pred_tokens, wordnet=wordnet or _NoSynonyms()))


def anls(prediction: str, answers: str | list[str], threshold: float = 0.5) -> float:
    """DocVQA's Average Normalized Levenshtein Similarity for one question: best over the answers of
    1 - NL if NL < threshold else 0, with NL the normalized edit distance of lower-cased, space-collapsed
    strings."""
    answers = [answers] if isinstance(answers, str) else answers

    def clean(text: str) -> str:
        return " ".join(normalize(text).lower().split())

    pred = clean(prediction)
    best = 0.0
    for answer in answers:
        nl = normalized_edit_distance(pred, clean(answer))
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


def _to_float(text: str) -> float | None:
    """A number, with a trailing % read as a fraction ("5%" -> 0.05), as pix2struct's ChartQA metric does."""
    try:
        return float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_accuracy(prediction: str, targets: str | list[str], tolerance: float = 0.05) -> float:
    """ChartQA relaxed accuracy (pix2struct's relaxed_correctness), 1.0 if any target matches: numbers
    within `tolerance` relative change of a non-zero target, anything else by case-insensitive equality."""
    targets = [targets] if isinstance(targets, str) else targets
    pred = normalize(prediction)
    for target in map(normalize, targets):
        pred_f, target_f = _to_float(pred), _to_float(target)
        if pred_f is not None and target_f:  # a zero target has no relative change: exact match below
            if abs(pred_f - target_f) / abs(target_f) <= tolerance:
                return 1.0
        elif pred.lower() == target.lower():
            return 1.0
    return 0.0


# --- page-level scoring ------------------------------------------------------------------------------
def page_scores(prediction: str, reference: str, fox_compatible: bool = False) -> dict[str, float]:
    """All page-OCR metrics for one page (keys: PAGE_METRICS + char_precision/char_recall).

    fox_compatible=True swaps the roles exactly as the public Fox/GOT scripts do (see module docstring).
    """
    prediction, reference = normalize(prediction), normalize(reference)
    if fox_compatible:
        prediction, reference = reference, prediction
    pred_tokens, ref_tokens = tokenize_pair(prediction, reference)
    p, r, f = set_precision_recall_f1(pred_tokens, ref_tokens)
    cp, cr, cf = char_precision_recall_f1(prediction, reference)
    return {
        "edit_distance": normalized_edit_distance(prediction, reference),
        "f1": f,
        "precision": p,
        "recall": r,
        "bleu": bleu(pred_tokens, ref_tokens),
        "meteor": meteor(pred_tokens, ref_tokens),
        "char_f1": cf,
        "char_precision": cp,
        "char_recall": cr,
    }


@dataclass
class MarkdownParts:
    text: str
    formula: str  # formula bodies in reading order, one per line
    table: str  # tables (markdown pipe blocks or tabular environments) in reading order, blank-line separated


# Tables first, so formulas inside table cells stay with their table. Unterminated tabular runs to the end
# (GOT's rule for truncated generations). A pipe table is a run of lines that start and end with "|".
_TABLE_RE = re.compile(r"\\begin\{tabular\}.*?(?:\\end\{tabular\}|\Z)|(?:^[ \t]*\|.*\|[ \t]*(?:\n|\Z))+", re.S | re.M)
# Mathpix-markdown formulas: display \[..\] and $$..$$, inline \(..\); an escaped delimiter does not close.
_FORMULA_RE = re.compile(r"\\\[(.+?)(?<!\\)\\\]|\$\$(.+?)(?<!\\)\$\$|\\\((.+?)(?<!\\)\\\)", re.S)


def split_markdown(markdown: str) -> MarkdownParts:
    """Split a Mathpix-markdown page into plain text, formulas and tables (each part may be empty)."""
    tables = [m.group(0).strip() for m in _TABLE_RE.finditer(markdown)]
    rest = _TABLE_RE.sub("\n", markdown)
    formulas = [next(g for g in m.groups() if g is not None).strip() for m in _FORMULA_RE.finditer(rest)]
    text = _FORMULA_RE.sub(" ", rest)
    text = re.sub(r"[ \t]+", " ", text)  # the gap a removed inline formula leaves
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return MarkdownParts(text=text, formula="\n".join(formulas), table="\n\n".join(tables))


def markdown_scores(prediction: str, reference: str, fox_compatible: bool = False) -> dict[str, float]:
    """Whole-page scores plus `{part}/{metric}` for each markdown part either side contains."""
    scores = page_scores(prediction, reference, fox_compatible)
    pred_parts = split_markdown(normalize(prediction))
    ref_parts = split_markdown(normalize(reference))
    for part in MARKDOWN_PARTS:
        pred_part, ref_part = getattr(pred_parts, part), getattr(ref_parts, part)
        if pred_part or ref_part:  # a part neither side has is not applicable, not a perfect score
            for name, value in page_scores(pred_part, ref_part, fox_compatible).items():
                scores[f"{part}/{name}"] = value
    return scores


# --- data-engine tasks: natural photos and charts ------------------------------------------------------
def _sentence_key(text: str) -> str:
    """Lower-cased, whitespace runs collapsed, trailing punctuation and whitespace dropped."""
    text = " ".join(normalize(text).lower().split())
    end = len(text)
    while end and (text[end - 1].isspace() or unicodedata.category(text[end - 1]).startswith("P")):
        end -= 1
    return text[:end]


_NATURE_KEYS = frozenset(_sentence_key(s) for s in NATURE_SENTENCES)


def nature_accuracy(prediction: str) -> float:
    """1.0 if the prediction is one of the five nature sentences (any of them, not only the reference's)."""
    return 1.0 if _sentence_key(prediction) in _NATURE_KEYS else 0.0


_AMBIGUOUS = object()  # two prediction entries that collapse to one key with different values


def _chart_values(data: dict) -> tuple[dict[tuple[str | None, str], Any], int]:
    """A chart's 'data' as {(series or None, category): value} plus its number of entries. Keys are
    str().strip()-ed; a dict value is a series of {category: value}, anything else a single-series value."""
    values: dict[tuple[str | None, str], Any] = {}
    entries = 0
    for key, value in data.items():
        if isinstance(value, dict):
            pairs = [((str(key).strip(), str(cat).strip()), v) for cat, v in value.items()]
        else:
            pairs = [((None, str(key).strip()), value)]
        for k, v in pairs:
            entries += 1
            values[k] = v if k not in values or _same_number(values[k], v) else _AMBIGUOUS
    return values, entries


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same_number(prediction: Any, reference: Any) -> bool:
    """Both are numbers (int or float, not bool) equal within 1e-6 relative: the same printed value."""
    return _is_number(prediction) and _is_number(reference) and math.isclose(prediction, reference, rel_tol=1e-6)


def chart_scores(prediction: str, reference: str) -> dict[str, float]:
    """chart_parses, chart_match and chart_value_accuracy of one chart answer (see module docstring).

    Both sides are `CHART_ANSWER_PREFIX` + a python-dict literal, read with `parse_chart_answer`
    (ast.literal_eval, length-capped; never eval). A reference that does not parse raises ValueError:
    that is a data error, not a model's.
    """

    ref_values, ref_entries = _chart_values(parse_chart_answer(reference)["data"])
    try:
        pred_values, pred_entries = _chart_values(parse_chart_answer(prediction)["data"])
    except ValueError:
        return {"chart_parses": 0.0, "chart_match": 0.0, "chart_value_accuracy": 0.0}
    correct = sum(key in pred_values and _same_number(pred_values[key], v) for key, v in ref_values.items())
    match = pred_values.keys() == ref_values.keys() and pred_entries == ref_entries and correct == len(ref_values)
    return {
        "chart_parses": 1.0,
        "chart_match": float(match),
        "chart_value_accuracy": correct / len(ref_values) if ref_values else float(match),
    }


METRIC_FAMILIES = ("page", "markdown", "anls", "relaxed", "nature", "chart")


def score(metric: str, prediction: str, reference: str | list[str], fox_compatible: bool = False) -> dict:
    """Score one prediction with the named metric family: page, markdown, anls, relaxed, nature or chart.

    Keys: page -> PAGE_METRICS + char_precision/char_recall; markdown -> those plus `{part}/{metric}`;
    anls -> anls; relaxed -> relaxed_accuracy; nature -> nature_accuracy;
    chart -> chart_parses, chart_match, chart_value_accuracy.
    """
    if metric == "anls":
        return {"anls": anls(prediction, reference)}
    if metric == "relaxed":
        return {"relaxed_accuracy": relaxed_accuracy(prediction, reference)}
    if metric == "nature":
        return {"nature_accuracy": nature_accuracy(prediction)}
    ref = reference if isinstance(reference, str) else reference[0]
    if metric == "chart":
        return chart_scores(prediction, ref)
    if metric == "page":
        return page_scores(prediction, ref, fox_compatible)
    if metric == "markdown":
        return markdown_scores(prediction, ref, fox_compatible)
    raise ValueError(f"unknown metric {metric!r}; choose one of {METRIC_FAMILIES}")
