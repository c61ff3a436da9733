"""Generation settings, the repetition-loop guard and turning generated ids back into text.

Dense-OCR decoders have a well-known failure: once a line or a short n-gram repeats, greedy decoding
keeps repeating it until max_new_tokens (the official GOT code fights it with no_repeat_ngram_size=20,
which also forbids legitimate repeats such as table rules). `LoopGuard` instead lets text repeat a
little and stops a row only when its *end* is the same unit copied many times; the result is marked
and the loop is cut back to a single copy of the unit. GOT-OCR2 models keep GOT's n-gram ban as their
default on top (`NoRepeatNGram`, from the model's prompt style), since that is what they were evaluated with.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, StoppingCriteria


@dataclass
class LoopGuardConfig:
    """A row stops when its last `max(min_repeats * p, min_tokens)` generated tokens repeat with period p."""

    max_period: int = 128  # longest repeated unit looked for, in tokens (a repeated line of text)
    min_repeats: int = 5  # copies of the unit at the end that make a loop ...
    min_tokens: int = 64  # ... covering at least this many tokens, so "0 0 0 0" in a table is no loop
    enabled: bool = True


@dataclass
class GenerationSettings:
    """Decoding defaults: greedy, as GOT does; the official Vary-base demo sampled instead."""

    max_new_tokens: int = 2048
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    # Ban any n-gram from occurring twice (GOT's demo: 20). None: the model's default (its generation_config,
    # else its prompt style's: 20 for GOT-OCR2, off for Vary); 0: off.
    no_repeat_ngram_size: int | None = None
    loop_guard: LoopGuardConfig = field(default_factory=LoopGuardConfig)


class LoopGuard(StoppingCriteria):
    """Stops rows whose generated tail is one unit of <= max_period tokens repeated; records where.

    Vectorised over rows and periods: with r the generated tail reversed, `eq[b, p, k] = r[k] == r[k + p]`
    and the number of leading matches `run[b, p]` says how far back the tail is p-periodic; the periodic
    stretch is `run + p` tokens long, i.e. `(run + p) / p` copies of the unit.
    """

    def __init__(self, prompt_length: int, pad_token_id: int, config: LoopGuardConfig | None = None):
        self.config = config or LoopGuardConfig()
        self.prompt_length = prompt_length
        self.pad_token_id = pad_token_id
        self.window = self.config.max_period * self.config.min_repeats
        periods = torch.arange(1, self.config.max_period + 1)
        self.periods = periods  # (P,)
        self.need = torch.clamp(periods * self.config.min_repeats, min=self.config.min_tokens)  # (P,)
        self.cuts: dict[int, tuple[int, int]] = {}  # row -> (sequence length when stopped, tokens to cut)

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        batch, length = input_ids.shape
        stop = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        generated = length - self.prompt_length
        if not self.config.enabled or generated < self.config.min_tokens:
            return stop
        span = min(generated, self.window)
        tail = input_ids[:, -span:].flip(-1).cpu()  # (B, L), newest token first
        k = torch.arange(span)
        shifted = k[None, :] + self.periods[:, None]  # (P, L): index of the token p places earlier
        valid = shifted < span
        eq = (tail[:, None, :] == tail[:, shifted.clamp(max=span - 1)]) & valid  # (B, P, L)
        run = eq.long().cumprod(-1).sum(-1)  # (B, P) leading matches
        hit = (run + self.periods) >= self.need  # (B, P)
        hit &= tail[:, :1] != self.pad_token_id  # rows already finished are padded, not looping
        for row in hit.any(-1).nonzero().flatten().tolist():
            if row not in self.cuts:
                p = int(hit[row].nonzero()[0])  # smallest period = the repeated unit itself
                self.cuts[row] = (length, int(run[row, p]))
            stop[row] = True
        return stop.to(input_ids.device)


class NoRepeatNGram(LogitsProcessor):
    """Bans every token that would repeat an n-gram already in the sequence (prompt included).

    The same rule as transformers' NoRepeatNGramLogitsProcessor, which rebuilds a Python dict of every n-gram
    of every row at each step; here the windows equal to the last n-1 tokens are found with n-1 shifted
    tensor comparisons, on the device (benchmarks/bench_no_repeat_ngram.py).
    """

    def __init__(self, ngram_size: int):
        if ngram_size < 1:
            raise ValueError(f"no_repeat_ngram_size must be >= 1, got {ngram_size}")
        self.n = ngram_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        batch, length = input_ids.shape
        if length < self.n:
            return scores
        span = length - self.n + 1  # window j = ids[j : j + n-1], followed by ids[j + n-1]
        last = input_ids[:, span:]  # (B, n-1): the n-gram being completed, minus its last token
        seen = torch.ones(batch, span, dtype=torch.bool, device=input_ids.device)
        for k in range(self.n - 1):  # contiguous slices: faster than comparing an unfold()ed view at once
            seen &= input_ids[:, k : k + span] == last[:, k : k + 1]
        rows, starts = seen.nonzero(as_tuple=True)
        scores[rows, input_ids[rows, starts + self.n - 1]] = float("-inf")  # in place, as transformers' does
        return scores


class CancelCriteria(StoppingCriteria):
    """Stops every row once `event` is set (a client went away, a user pressed stop)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def generated_ids(
    sequences: torch.Tensor, prompt_length: int, row: int, guard: LoopGuard | None, end_ids: set[int]
) -> tuple[list[int], bool]:
    """A row's answer ids (up to its end token, loop cut back to one copy) and whether the guard stopped it."""
    ids = sequences[row].tolist()
    looped = guard is not None and row in guard.cuts
    if looped:
        stopped_at, cut = guard.cuts[row]
        ids = ids[: stopped_at - cut]
    ids = ids[prompt_length:]
    for i, token in enumerate(ids):
        if token in end_ids:
            return ids[:i], False
    return ids, looped


def clean_text(text: str, stop: str) -> str:
    """Cut at the template's stop string (when it is plain text rather than a special token) and trim."""
    if stop and stop in text:
        text = text[: text.index(stop)]
    return text.strip()
