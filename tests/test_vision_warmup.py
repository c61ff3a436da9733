"""The vision warm-up's targets (reports/training/nano-ocr/vision_warmup.py): each image token must be asked to
redraw its own cell, in the order the vision vocabulary emits its tokens, and to name the answer's characters."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reports" / "training" / "nano-ocr"))
from vision_warmup import CharacterHead, character_sets, ink_cells  # noqa: E402

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def normalised(grey: torch.Tensor) -> torch.Tensor:
    """(B, S, S) grey in [0, 1] -> (B, 3, S, S) as the processor normalises it."""
    return (grey[:, None].expand(-1, 3, -1, -1) - MEAN[0]) / STD[0]


def test_ink_cells_follow_the_token_order():
    grey = torch.ones(2, 384, 384)  # white pages
    grey[0, 0:64, 320:384] = 0.0  # image 0: a black square in cell (row 0, col 5)
    grey[1, 128:192, 64:128] = 0.0  # image 1: in cell (row 2, col 1)
    cells = ink_cells(normalised(grey), MEAN, STD, grid=6, cell=16)
    assert cells.shape == (2, 36, 256)
    inked = (cells.mean(-1) > 0.5).nonzero().tolist()
    assert inked == [[0, 5], [1, 13]]  # row-major, as VisionVocabulary flattens its 6 x 6 grid
    assert torch.allclose(cells[0, 5], torch.ones(256)) and cells[0, 4].abs().max() < 1e-6


def test_character_sets_mark_answer_characters_only():
    labels = torch.tensor([[-100, -100, 7, 8, 7, 1], [-100, 9, 1, 0, -100, -100]])
    sets = character_sets(labels, vocab_size=12, ignore=[0, 1])
    assert sets[0].nonzero().flatten().tolist() == [7, 8]
    assert sets[1].nonzero().flatten().tolist() == [9]


def test_character_head_starts_silent_and_pools_over_tokens():
    head = CharacterHead(hidden=8, vocab_size=5)
    tokens = torch.randn(3, 36, 8)
    assert torch.allclose(head(tokens), torch.full((3, 5), -4.0))  # zero weights: no random first gradients
    with torch.no_grad():
        head.linear.weight[2, 0] = 1.0
    tokens[1, 17, 0] = 50.0  # one token of image 1 sees character 2
    logits = head(tokens)
    assert logits[1, 2] > 40 and logits[0, 2] < 10
