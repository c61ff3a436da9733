"""The vision warm-up (vary.train.vision_warmup): each image token must be asked to redraw its own cell, in the
order the vision vocabulary emits its tokens, name the answer's characters and, from the blocks source's glyph
boxes, the characters in its own cell; a short run trains only the vision side and saves a loadable model."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from vary.cli import app
from vary.data.dataset import open_source
from vary.data.engine import GenerateConfig, generate
from vary.modeling.loading import load_model
from vary.modeling.processor import VaryProcessor
from vary.modeling.tokenizer import train_char_tokenizer
from vary.train.vision_warmup import (
    CharacterHead,
    WarmupConfig,
    WarmupError,
    WarmupImages,
    cell_accuracy,
    cell_characters,
    cell_cross_entropy,
    character_set,
    ink_cells,
    nano_model,
    warm_up,
)

pytestmark = pytest.mark.usefixtures("one_thread")

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


def test_character_set_marks_answer_tokens_only():
    sets = character_set([7, 8, 7, 1, 2], vocab_size=12, ignore=[0, 1, 2])
    assert sets.nonzero().flatten().tolist() == [7, 8]


def test_cell_characters_put_each_glyph_in_the_cell_of_its_centre():
    boxes = torch.tensor([[10, 10, 50, 60], [60, 10, 100, 60], [330, 300, 383, 383], [100, 10, 120, 60]])
    cells = cell_characters(torch.tensor([7, 8, 9, 2]), boxes.float(), side=384, grid=6, vocab_size=12, ignore=[2])
    assert cells.shape == (36, 12)
    # centres (30, 35) -> cell 0; (80, 35) -> row 0 col 1; (356.5, 341.5) -> row 5 col 5; id 2 ignored
    assert cells.nonzero().tolist() == [[0, 7], [1, 8], [35, 9]]


def test_cell_cross_entropy_and_accuracy_treat_empty_cells_as_a_class():
    cells = torch.zeros(1, 3, 4)
    cells[0, 0, 1] = 1.0  # cell 0: character 1; cell 1: characters 2 and 3; cell 2: empty
    cells[0, 1, [2, 3]] = 1.0
    logits = torch.full((1, 3, 5), -20.0)
    logits[0, 0, 1] = logits[0, 1, 2] = logits[0, 1, 3] = logits[0, 2, 4] = 20.0
    loss = cell_cross_entropy(logits, cells)
    assert abs(loss.item() - torch.log(torch.tensor(2.0)).item() / 3) < 1e-4  # cell 1 splits its mass: ln 2
    assert cell_accuracy(logits, cells) == (1.0, 1.0)
    logits[0, 2, 0] = 30.0  # the empty cell now names character 0; cell 0 says "empty"
    logits[0, 0, 4] = 30.0
    assert cell_accuracy(logits, cells) == (0.5, 0.0)
    assert cell_cross_entropy(logits, cells) > loss + 6  # two cells 10 nats off, over 3 cells


def test_character_head_starts_silent_and_scores_each_token():
    head = CharacterHead(hidden=8, vocab_size=5)
    tokens = torch.randn(3, 36, 8)
    assert torch.allclose(head(tokens), torch.full((3, 36, 5), -4.0))  # zero weights: no random first gradients
    with torch.no_grad():
        head.linear.weight[2, 0] = 1.0
    tokens[1, 17, 0] = 50.0  # one token of image 1 sees character 2
    logits = head(tokens)
    assert logits[1, 17, 2] > 40 and logits[1].amax(0)[2] > 40 and logits[0].amax(0)[2] < 10


def test_warmup_images_label_cells_from_the_generated_boxes(tmp_path):
    options = {"lines": "1-2", "font": "0.12-0.2"}
    generate(GenerateConfig("blocks", tmp_path / "boxed", count=3, size=384, options={**options, "boxes": "true"},
                            progress=False))  # fmt: skip
    generate(GenerateConfig("blocks", tmp_path / "plain", count=1, size=384, options=options, progress=False))
    source = open_source(tmp_path / "boxed", progress=False)
    tokenizer = train_char_tokenizer(source.texts(10))
    processor = VaryProcessor(nano_model(len(tokenizer)).config, tokenizer)
    images = WarmupImages([source], processor, grid=6, cells=True)
    for record in range(3):
        item, conv = images[(0, record, record)], source.conversation(record)
        answer = conv.turns[-1][1]
        assert item["pixel_values"].shape == (3, 384, 384) and item["cells"].shape == (36, len(tokenizer))
        named = {tokenizer.convert_ids_to_tokens(i) for i in item["characters"].nonzero().flatten().tolist()}
        assert named == set(answer.replace("\n", " "))  # a line break is no glyph
        in_cells = {tokenizer.convert_ids_to_tokens(i) for i in item["cells"].amax(0).nonzero().flatten().tolist()}
        assert in_cells == set(answer.replace("\n", ""))  # every character sits in some cell
        answer = answer.replace("\n", "")
        left, top, right, bottom = conv.meta["char_boxes"][0]  # the first glyph, in its centre's cell
        cell = int((top + bottom) / 2 / 64) * 6 + int((left + right) / 2 / 64)
        assert item["cells"][cell, tokenizer.convert_tokens_to_ids(answer[0])] == 1
    plain = WarmupImages([open_source(tmp_path / "plain", progress=False)], processor, grid=6, cells=True)
    with pytest.raises(WarmupError, match="boxes=true"):
        plain[(0, 0, 0)]


@pytest.fixture(scope="module")
def boxed_blocks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("warmup")
    options = {"lines": "1", "font": "0.15-0.2", "boxes": "true"}
    generate(GenerateConfig("blocks", folder / "train", count=4, size=384, options=options, progress=False))
    generate(GenerateConfig("blocks", folder / "heldout", count=2, size=384, seed=1000, options=options,
                            progress=False))  # fmt: skip
    return folder


def test_warm_up_trains_the_vision_side_only_and_saves_a_loadable_model(boxed_blocks, tmp_path):
    logged = []
    config = WarmupConfig(data=[str(boxed_blocks / "train")], heldout=str(boxed_blocks / "heldout"),
                          out=tmp_path / "warm", steps=2, batch_size=2, eval_every=1, workers=0, device="cpu",
                          pixel_weight=1.0, cell_weight=1.0)  # fmt: skip
    out = warm_up(config, progress=False, log=logged.append)
    assert len(logged) == 2 and all("precision/recall" in line and "cells read right" in line for line in logged)
    warmed = load_model(out)
    torch.manual_seed(config.seed)  # warm_up builds its model right after seeding: this is its starting point
    fresh = nano_model(warmed.config.text_config.vocab_size)
    before, after = fresh.state_dict(), warmed.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("vision_vocab.") for k in changed)
    assert any(k.startswith("projector_vary.") for k in changed)
    assert not any(k.startswith("language_model.") for k in changed)  # the decoder is left for the recipe


def test_cell_objective_needs_a_character_tokenizer(boxed_blocks, tiny_model_dir, tmp_path):
    config = WarmupConfig(data=[str(boxed_blocks / "train")], heldout=str(boxed_blocks / "heldout"),
                          out=tmp_path / "warm", steps=1, batch_size=1, workers=0, device="cpu",
                          tokenizer=str(tiny_model_dir), cell_weight=1.0)  # fmt: skip
    with pytest.raises(WarmupError, match="character tokenizer"):
        warm_up(config, progress=False)


def test_cli_warmup_reports_a_missing_folder_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["train", "warmup", "--data", str(tmp_path / "nope"), "--heldout",
                                      str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"])  # fmt: skip
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output
