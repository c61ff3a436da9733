"""A convolutional vision vocabulary with a reading head: the design of the CPU-trained bundled model.

Vary's SAM ViT vocabulary, trained from scratch on a CPU through the decoder's loss alone, collapsed to
image-independent tokens (reports/training/prose-reader). This network is what OCR front ends have long used
instead (CRNN, Shi et al. 2015): a small residual conv net whose output grid keeps text lines apart, with a
direct, dense objective on it. Each grid row covers 16 px of the image and each column 8 px, so a row holds one
line of text; a linear *reading head* names the character under each of `reading_frames` sub-columns of every
cell (4 px frames), trained with cross-entropy against labels that the glyph boxes of synthetic text give
(vary.data.dataset.line_labels_for). The image always shapes the features, and the head reads a page on its
own, without the decoder.

The decoder sees the same grid packed into tokens: `token_columns` neighbouring cells of a row become one
token (S/16 rows x S/32 tokens per row: 288 tokens at 384 px), so it reads rows left to right, top to bottom.

image (N, 3, S, S) -> stem (stride 8, then stride 2 down only) -> grid (N, C, S/16, S/8)
grid -> reading head -> (N, S/16, S/8 * reading_frames, vocab) frame logits, blank = the pad token
grid -> pack `token_columns` cells -> (N, S/16 * S/32, C * token_columns) tokens for the projector
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from rapidfuzz.distance import Levenshtein
from torch import nn

ROW_STRIDE, COLUMN_STRIDE = 16, 8


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x + self.body(x))


def down(c_in: int, c_out: int, stride: int | tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.GELU())  # fmt: skip


class ConvVisionVocabulary(nn.Module):
    def __init__(self, channels: tuple[int, ...] | list[int], token_columns: int = 4):
        super().__init__()
        c1, c2, c3, c4 = channels
        # strides 2, 2, 2 then (2, 1): rows 16 px, columns 8 px. Residual blocks where the grid is small enough
        # to afford them; the last stage's vertical receptive field (~150 px) spans a line and its neighbours.
        self.stem = nn.Sequential(
            down(3, c1, 2), down(c1, c2, 2), ResidualBlock(c2),
            down(c2, c3, 2), ResidualBlock(c3), ResidualBlock(c3),
            down(c3, c4, (2, 1)), ResidualBlock(c4), ResidualBlock(c4),
        )  # fmt: skip
        self.token_columns = token_columns
        self.fast_cpu = False  # the SAM vocabulary's switch; a conv net has no separate fast path

    @property
    def out_channels(self) -> int:
        return self.stem[-1].body[-1].num_features

    def grid(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, C, S/16, S/8): one cell per 16 x 8 px."""
        return self.stem(pixel_values)

    def pack(self, grid: torch.Tensor) -> torch.Tensor:
        """(N, C, R, W) -> (N, R * W / k, C * k): k = token_columns neighbouring cells of a row per token."""
        n, c, rows, width = grid.shape
        k = self.token_columns
        x = grid.permute(0, 2, 3, 1).reshape(n, rows, width // k, k * c)
        return x.flatten(1, 2)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.pack(self.grid(pixel_values))


def reading_loss(logits: torch.Tensor, frame_labels: torch.Tensor, blank: int) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of every reading frame against its label, and the number of character frames.

    logits (N, R, F, V); frame_labels (N, R, F): the character each frame shows (the middle of its glyph box),
    `blank` between characters and on rows without a line, -100 where unknown (images without glyph boxes).
    The alignment comes from the glyph boxes, so no CTC search is needed: CTC on the same rows sat at the
    characters' prior for hundreds of steps (reports/training/reader).
    """
    keep = frame_labels != -100
    if not bool(keep.any()):
        return logits.sum() * 0.0, 0
    loss = F.cross_entropy(logits[keep].float(), frame_labels[keep], reduction="sum")
    return loss, int((frame_labels[keep] != blank).sum())


# Two touching frames (no blank between) of different characters are two narrow glyphs side by side, or one
# glyph whose frames the head split between look-alikes ("Ww", "Vv", "l1", "pg"). They are read as one glyph, the
# likelier of the two over all its frames, when that costs under this many nats of summed log-probability against
# the split path. Dev sets (research/reader/decode_dev.py --lookalike-nats; C7, 64 prose blocks and 52 / 64 bar
# charts a language): prose ED en 0.043 -> 0.037, zh 0.213 -> 0.205, chart values en 0.43 -> 0.51, zh 0.16 -> 0.18;
# flat from 1 to 2 nats, lower on charts from 5.
LOOKALIKE_NATS = 1.5
# Two equal letters side by side ("ff", "ss", "00") are labelled with a blank frame between them (line_labels_for),
# but at text sizes where the two glyphs' middles are a frame or two apart the head often reads one run ("Bufer",
# "beter"). Where the blank's probability peaks inside a run of one narrow letter or digit at this or more, the run
# is read as two. Dev sets (research/reader/decode_dev.py --double-letter-blank; C7, 64 prose blocks a language,
# read at the trained size): English ED 0.037 -> 0.031, Chinese 0.205 either way; at 0.02 0.030, 0.1 0.033, 0.2
# 0.035 (0.05 over 0.02: within noise of it, with a higher bar for a split on unseen faces). Charts are read
# enlarged (their glyphs span more frames, and noise inside a run peaks higher: 0.638 -> 0.597 English values
# with it), so they do not use it; nor do punctuation and box-drawing runs ("__", "──": Chinese ED 0.211 when
# those split too).
DOUBLE_LETTER_BLANK = 0.05


def greedy_rows(logits: torch.Tensor, blank: int, wide: torch.Tensor | None = None,
                lookalike_nats: float = LOOKALIKE_NATS, letters: torch.Tensor | None = None,
                double_blank: float = DOUBLE_LETTER_BLANK,
                probs: torch.Tensor | None = None) -> list[list[tuple[int, list[int], float, list[int]]]]:  # fmt: skip
    """Best-path decoding of every row (as CTC's: repeats merged, blanks dropped; a character's frames are the
    middle of its glyph box, so neighbouring equal letters stay apart by a blank): per image, (row, token ids,
    mean confidence of the kept characters, the frame each id starts at) for each row that reads something.
    Vectorised over the batch; rows where a run of frames needs a choice are read run by run (read_runs).

    `wide` (vocab,) bool marks tokens whose glyphs are about as wide as tall (CJK, `wide_tokens`): a run of
    non-blank frames holding one is one character, the one with the most probability summed over the run. Such
    a glyph's labelled middle half spans several frames that the head may split between look-alikes ("管青管青"
    for one character); two wide glyphs always have blank frames between them. On a dev set this took the
    Chinese edit distance from 0.51 to 0.37 and left English as it was (research/reader/decode_dev.py).
    Narrow glyphs split so are merged by LOOKALIKE_NATS (`lookalike_nats`; 0: never). `letters` (vocab,) bool
    (`letter_tokens`): a run of one of them is read as two where the blank peaks inside it at `double_blank`
    or more (DOUBLE_LETTER_BLANK; without `letters` or at 0: never). `probs`: the logits' softmax, where the
    caller has it already (it is half the time of a call)."""
    probs = logits.float().softmax(-1) if probs is None else probs
    conf, best = probs.max(-1)  # (N, R, W)
    if letters is not None and double_blank > 0:
        best = split_doubles(probs[..., blank], best, blank, letters, double_blank)
    text = best != blank
    repeat = torch.zeros_like(best, dtype=torch.bool)
    repeat[..., 1:] = best[..., 1:] == best[..., :-1]
    keep = text & ~repeat
    needs_runs = wide[best] & text if wide is not None else torch.zeros_like(keep)
    if lookalike_nats > 0:  # two different characters touching
        needs_runs[..., 1:] |= keep[..., 1:] & text[..., :-1]
    out = []
    for image_probs, image_best, image_keep, image_conf, image_runs in zip(probs, best, keep, conf, needs_runs,
                                                                           strict=True):  # fmt: skip
        rows = []
        for r in torch.nonzero(image_keep.any(-1)).flatten().tolist():
            if image_runs[r].any():
                is_wide = wide[image_best[r]] if wide is not None else torch.zeros_like(image_keep[r])
                ids, confs, frames = read_runs(image_probs[r], image_best[r], blank, is_wide, lookalike_nats)
                rows.append((r, ids, sum(confs) / len(confs), frames))
                continue
            mask = image_keep[r]
            frames = torch.nonzero(mask).flatten().tolist()
            rows.append((r, image_best[r][mask].tolist(), float(image_conf[r][mask].mean()), frames))
        out.append(rows)
    return out


def split_doubles(blank_probs: torch.Tensor, best: torch.Tensor, blank: int, letters: torch.Tensor,
                  threshold: float) -> torch.Tensor:  # fmt: skip
    """`best` (..., F) with a blank at each frame inside a run of one letter (both neighbours the same letter)
    where the blank's probability `blank_probs` (..., F) is a local peak of at least `threshold`: the head read
    two equal letters without the blank between them (see DOUBLE_LETTER_BLANK)."""
    middle = best[..., 1:-1]
    inside = (middle == best[..., :-2]) & (middle == best[..., 2:]) & letters[middle]
    p = blank_probs[..., 1:-1]
    peak = (p >= threshold) & (p >= blank_probs[..., :-2]) & (p >= blank_probs[..., 2:])
    split = best.clone()
    split[..., 1:-1] = torch.where(inside & peak, torch.full_like(middle, blank), middle)
    return split


def read_runs(probs: torch.Tensor, best: torch.Tensor, blank: int, wide: torch.Tensor,
              lookalike_nats: float = LOOKALIKE_NATS) -> tuple[list[int], list[float], list[int]]:  # fmt: skip
    """One row (F, V) read run by run: a run of non-blank frames with a wide glyph is its likeliest character
    (probabilities summed over the run), any other run its best path with touching look-alikes merged
    (merge_lookalikes). Returns ids, their confidences and the frame each starts at."""
    text = best != blank
    run = torch.cumsum(~text, 0)  # the frames of one run share a number
    ids, confs, starts = [], [], []
    for k in torch.unique(run[text]).tolist():
        frames = text & (run == k)
        if wide[frames].any():
            total = probs[frames].sum(0)
            c = int(total.argmax())
            ids.append(c)
            confs.append(float(total[c]) / int(frames.sum()))
            starts.append(int(torch.nonzero(frames)[0]))
            continue
        where = torch.nonzero(frames).flatten()
        for c, glyph in merge_lookalikes(probs[where], best[where].tolist(), lookalike_nats):
            ids.append(c)
            confs.append(float(probs[where[glyph], c].mean()))
            starts.append(int(where[glyph[0]]))
    return ids, confs, starts


def merge_lookalikes(probs: torch.Tensor, best: list[int], nats: float) -> list[tuple[int, list[int]]]:
    """One run of non-blank frames (n, V) and its best path -> (character, its frames' positions in the run) per
    glyph: the frames of one character in a row are a segment, and a segment joins the glyph before it when
    reading both as one character, the likelier of their two, costs under `nats` against reading them apart
    (LOOKALIKE_NATS)."""
    segments: list[tuple[int, list[int]]] = []
    for i, c in enumerate(best):
        if segments and segments[-1][0] == c:
            segments[-1][1].append(i)
        else:
            segments.append((c, [i]))
    if len(segments) == 1 or nats <= 0:  # nothing touches, or no merging: the best path as it is
        return segments
    log = probs.clamp_min(1e-9).log()
    glyphs: list[tuple[int, list[int], float]] = []  # (character, positions, summed log-probability)
    for c, positions in segments:
        score = float(log[positions, c].sum())
        if glyphs:
            last, before, last_score = glyphs[-1]
            both = log[before + positions].sum(0)
            merged = max((last, c), key=lambda x: float(both[x]))
            if last_score + score - float(both[merged]) < nats:
                glyphs[-1] = (merged, before + positions, float(both[merged]))
                continue
        glyphs.append((c, positions, score))
    return [(c, positions) for c, positions, _ in glyphs]


def ideograph(char: str) -> bool:
    """A CJK ideograph (the unified ideographs and extension A)."""
    return "\u3400" <= char <= "\u9fff"


def wide_glyph(char: str) -> bool:
    """CJK ideographs, CJK punctuation and full-width forms: glyphs about as wide as they are tall."""
    return ideograph(char) or "\u3000" <= char <= "\u303f" or "\uff00" <= char <= "\uffef"


def wide_tokens(tokenizer, vocab_size: int) -> torch.Tensor:
    """(vocab_size,) bool: the single-character tokens with a wide glyph (see greedy_rows)."""
    return _char_tokens(tokenizer, vocab_size, wide_glyph)


def letter_tokens(tokenizer, vocab_size: int) -> torch.Tensor:
    """(vocab_size,) bool: the single-character tokens that are a letter or digit with a narrow glyph (see
    DOUBLE_LETTER_BLANK)."""
    return _char_tokens(tokenizer, vocab_size, lambda char: char.isalnum() and not wide_glyph(char))


def _char_tokens(tokenizer, vocab_size: int, keep: Callable[[str], bool]) -> torch.Tensor:
    """(vocab_size,) bool: the single-character tokens whose character `keep` accepts."""
    marked = torch.zeros(vocab_size, dtype=torch.bool)
    marked[list(char_token_ids(tokenizer, vocab_size, keep))] = True
    return marked


def char_token_ids(tokenizer, vocab_size: int, keep: Callable[[str], bool]) -> dict[int, str]:
    """{id: character} of the single-character tokens (below `vocab_size`) whose character `keep` accepts."""
    return {
        i: token for token, i in tokenizer.get_vocab().items() if i < vocab_size and len(token) == 1 and keep(token)
    }


def run_end(best: torch.Tensor, blank: int, start: int, limit: int) -> int:
    """The first frame from `start` on where the best path `best` (F,) is blank, at most `limit`: where the run
    of non-blank frames at `start` ends."""
    f = start
    while f < limit and int(best[f]) != blank:
        f += 1
    return f


def same_line(a: tuple, b: tuple, similar: float = 0.6,
              contained: float = 0.4) -> bool:  # fmt: skip
    """Whether two neighbouring rows' readings (row, ids, confidence, ...) are one line: nearly equal (normalised
    Levenshtein similarity >= `similar`), or the shorter, read less confidently, is a part of the longer with at
    most `contained` of its characters misread (a row that sees only the top or the bottom of the glyphs reads
    fewer of them: "This modul" under "This module also provides")."""
    if Levenshtein.normalized_similarity(a[1], b[1]) >= similar:
        return True
    short, long = sorted((a, b), key=lambda row: len(row[1]))
    excess = Levenshtein.distance(short[1], long[1]) - (len(long[1]) - len(short[1]))  # beyond the missing ones
    return bool(short[1]) and short[2] < long[2] and excess <= contained * len(short[1])


def merge_rows(rows: list[tuple], similar: float = 0.6, contained: float = 0.4, *,
               given: list[tuple] | None = None) -> list[list[int]]:  # fmt: skip
    """One id list per text line. Training gives a line to every row its glyphs span, so a line is read by one
    to three neighbouring rows: of neighbouring rows that read the same line (same_line), keep the most
    confident. Neighbouring rows that read different text are two lines (dense type puts consecutive lines on
    consecutive rows), and real prose never repeats a line that closely. `given`: the same rows read otherwise
    (double letters split: greedy_rows with `letters`; words corrected: vary.modeling.lexicon); the lines are
    chosen on `rows` and given as read there."""
    lines: list[tuple] = []
    last_row = -2  # the last row merged into lines[-1] (a tall line spans several rows)
    for row in rows:
        if lines and row[0] == last_row + 1 and same_line(row, lines[-1], similar, contained):
            if row[2] > lines[-1][2]:
                lines[-1] = row
        else:
            lines.append(row)
        last_row = row[0]
    given_ids = {row[0]: row[1] for row in given or ()}
    return [given_ids.get(line[0], line[1]) for line in lines]
