"""Training data: shard/JSON sources, the deterministic mixture order, label masking, collation, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vary.config import preset
from vary.data.dataset import (
    IGNORE_INDEX,
    Collator,
    DataError,
    JsonSource,
    MixtureSampler,
    ShardSource,
    SkipSample,
    VaryTrainDataset,
    encode_conversation,
    open_source,
)
from vary.data.sample import Sample
from vary.data.shards import ShardWriter, encode_sample, iter_shards
from vary.modeling.processor import VaryProcessor
from vary.modeling.tokenizer import train_bpe_tokenizer
from vary.templates import get_template

WORDS = [
    "the",
    "of",
    "and",
    "page",
    "table",
    "chart",
    "value",
    "total",
    "year",
    "sales",
    "figure",
    "data",
    "text",
    "line",
    "model",
    "vision",
]

# Toy model sizes (as tests/conftest.py's tiny_config) for recipes' model.config.
TINY_MODEL = dict(
    vision_config=dict(image_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, window_size=8,
                       global_attn_indexes=[1], output_channels=32),
    downsample_channels=[32, 64],
    image_token_len=16,
    text_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, ffn_dim=128, word_embed_proj_dim=64,
                     vocab_size=512, max_position_embeddings=512),
)  # fmt: skip


def make_sample(i: int, kind: str = "pages", size: int = 128) -> Sample:
    """A small page: a few random words drawn on white; the target is exactly those words."""
    rng = random.Random(i)
    lines = [" ".join(rng.choice(WORDS) for _ in range(4)) for _ in range(rng.randint(2, 5))]
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    for j, line in enumerate(lines):
        draw.text((4, 4 + 14 * j), line, fill=0)
    return Sample(key=f"{kind}-en-{i:08d}", image=image, target="\n".join(lines), task="ocr", lang="en", kind=kind)


def write_shards(folder: Path, count: int, per_shard: int = 16, kind: str = "pages", start: int = 0,
                 corrupt: dict[int, str] | None = None) -> Path:  # fmt: skip
    """Shards in the engine's format; `corrupt` maps sample index -> "image" (bad PNG bytes) or "json"."""
    folder.mkdir(parents=True, exist_ok=True)
    corrupt = corrupt or {}
    for shard_start in range(start, start + count, per_shard):
        writer = ShardWriter(folder / f"{kind}-en-{shard_start // per_shard:05d}.tar")
        for i in range(shard_start, min(shard_start + per_shard, start + count)):
            members = encode_sample(make_sample(i, kind))
            if corrupt.get(i) == "image":
                members[0] = (members[0][0], b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
            elif corrupt.get(i) == "json":
                members[1] = (members[1][0], b'{"target": "unterminated')
            writer.add(members)
        writer.commit()
    return folder


@pytest.fixture(scope="module")
def tokenizer():
    texts = [make_sample(i).target for i in range(200)] + ["Provide the OCR results of this image."]
    return train_bpe_tokenizer(texts, vocab_size=400)


def processor_for(tokenizer, **overrides) -> VaryProcessor:
    config = preset("nano", **{**TINY_MODEL, "text_config": {**TINY_MODEL["text_config"], "vocab_size": len(tokenizer)}},
                    **overrides)  # fmt: skip
    return VaryProcessor(config, tokenizer)


# --- sources ------------------------------------------------------------------------------------------------
def test_shard_source_random_access_matches_the_engine_reader(tmp_path):
    folder = write_shards(tmp_path / "d", count=20, per_shard=8)
    source = ShardSource(folder, progress=False)
    assert len(source) == 20
    streamed = list(iter_shards(folder))
    for i in (0, 7, 8, 19):
        conv = source.conversation(i)
        assert conv.key == streamed[i].key
        assert conv.turns == [("Provide the OCR results of this image.", streamed[i].target)]
        assert np.array_equal(np.asarray(conv.image), np.asarray(streamed[i].image))


def test_missing_and_empty_data_folders_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such data folder"):
        open_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no \.tar shards"):
        open_source(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="folder of .tar shards or a .json"):
        open_source(tmp_path / "x.txt")


def test_corrupt_samples_are_skipped_with_their_reason(tmp_path, tokenizer):
    folder = write_shards(tmp_path / "d", count=6, corrupt={1: "image", 4: "json"})
    source = ShardSource(folder, progress=False)
    with pytest.raises(SkipSample, match="pages-en-00000001"):
        source.conversation(1)
    dataset = VaryTrainDataset([source], processor_for(tokenizer), max_length=128)
    batch = Collator(dataset, pad_token_id=0)([dataset[(0, i, i)] for i in range(6)])
    assert batch["stats"]["samples"] == 4 and batch["stats"]["skipped"] == {"corrupt": 2}
    assert batch["input_ids"].shape[0] == 4 and batch["pixel_values"].shape[0] == 4


def test_a_micro_batch_of_only_corrupt_samples_becomes_a_zero_loss_blank(tmp_path, tokenizer):
    folder = write_shards(tmp_path / "d", count=2, corrupt={0: "image", 1: "image"})
    dataset = VaryTrainDataset([ShardSource(folder, progress=False)], processor_for(tokenizer), max_length=128)
    batch = Collator(dataset, pad_token_id=0)([dataset[(0, 0, 0)], dataset[(0, 1, 1)]])
    assert batch["stats"]["samples"] == 0 and batch["stats"]["skipped"] == {"corrupt": 2}
    assert (batch["labels"] == IGNORE_INDEX).all() and batch["pixel_values"].shape == (1, 3, 256, 256)


def test_a_damaged_tar_keeps_the_samples_before_the_damage(tmp_path):
    folder = write_shards(tmp_path / "d", count=8, per_shard=8)
    path = next(folder.glob("*.tar"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + b"\x01" * 700)  # a half-copied shard
    source = ShardSource(folder, progress=False)
    assert 0 < len(source) < 8
    assert source.warnings and "unreadable" in source.warnings[0]


def test_llava_json_source_multi_turn_and_bad_entries(tmp_path, tokenizer):
    images = tmp_path / "imgs"
    images.mkdir()
    make_sample(0).image.save(images / "a.png")
    entries = [
        {"image": "a.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is the title?"}, {"from": "gpt", "value": "sales"},
            {"from": "human", "value": "And the year?"}, {"from": "gpt", "value": "1999"}]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"image": "missing.png", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    ]  # fmt: skip
    path = tmp_path / "train.json"
    path.write_text(json.dumps(entries))
    source = open_source(path, images)
    assert isinstance(source, JsonSource) and len(source) == 3
    assert source.conversation(0).turns == [("What is the title?", "sales"), ("And the year?", "1999")]
    with pytest.raises(SkipSample) as skip:
        source.conversation(1)
    assert skip.value.reason == "no_image"
    with pytest.raises(SkipSample, match="missing.png"):
        source.conversation(2)
    # Vicuna v1, two turns: both answers are trained on, neither question is.
    ids, labels, _ = encode_conversation(tokenizer, get_template("vicuna_v1"), source.conversation(0).turns, 16, 512)
    trained = tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX])
    assert trained.replace(" ", "") == "sales</s>1999</s>"


# --- tokenisation ------------------------------------------------------------------------------------------
def test_labels_cover_only_the_answer_and_its_end(tokenizer):
    template = get_template("plain")
    ids, labels, truncated = encode_conversation(tokenizer, template, [("ignored", "the page")], 16, 512)
    assert not truncated and len(ids) == len(labels)
    prompt_len = len(tokenizer(template.prompt("", 1, 16)).input_ids)
    assert labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:]
    assert tokenizer.decode(ids[prompt_len:]) == "the page\n</s>"
    assert ids.count(5) == 16  # <imgpad>


def test_truncation_is_flagged_and_a_prompt_that_does_not_fit_is_skipped(tokenizer):
    template = get_template("plain")
    ids, labels, truncated = encode_conversation(tokenizer, template, [("", "the page " * 50)], 16, 40)
    assert truncated and len(ids) == 40 and labels[-1] != IGNORE_INDEX
    with pytest.raises(SkipSample) as skip:
        encode_conversation(tokenizer, template, [("", "x")], 16, 12)
    assert skip.value.reason == "too_long"


def test_collator_pads_right_with_masked_labels(tmp_path, tokenizer):
    folder = write_shards(tmp_path / "d", count=4)
    dataset = VaryTrainDataset([ShardSource(folder, progress=False)], processor_for(tokenizer), max_length=256)
    examples = [dataset[(0, i, i)] for i in range(4)]
    batch = Collator(dataset, pad_token_id=0)(examples)
    lengths = [len(x["input_ids"]) for x in examples]
    assert batch["input_ids"].shape[1] >= max(lengths) and batch["input_ids"].shape[1] % 8 == 0
    for row, n in enumerate(lengths):
        assert batch["attention_mask"][row].sum() == n
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all() and (batch["input_ids"][row, n:] == 0).all()
    assert batch["pixel_values"].dtype == torch.float32


# --- order ------------------------------------------------------------------------------------------------
def _flat(sampler) -> list:
    return [ref for batch in sampler for ref in batch]


def test_mixture_order_is_split_over_processes_without_changing_global_batches():
    kw = dict(sizes=[50, 7], weights=[3.0, 1.0], seed=5, batch_size=2, max_steps=6)
    one = list(MixtureSampler(**kw, accumulation=4))  # 1 process: 4 micro-batches of 2 per step
    ranks = [list(MixtureSampler(**kw, num_processes=2, process_index=r, accumulation=2)) for r in (0, 1)]
    for step in range(6):
        single = sorted(ref for mb in one[step * 4 : step * 4 + 4] for ref in mb)
        split = sorted(ref for r in ranks for mb in r[step * 2 : step * 2 + 2] for ref in mb)
        assert single == split  # the same 8 samples in each optimizer step
    refs = _flat(MixtureSampler(**kw, accumulation=4))
    assert [p for _, _, p in refs] == list(range(48))
    counts = np.bincount([s for s, _, _ in refs])
    assert counts[0] > counts[1] > 0  # weighted 3:1
    small = sorted(r for s, r, _ in refs if s == 1)
    assert set(small) == set(range(7))  # the small source wraps into a new epoch, all records seen


def test_mixture_order_resumes_mid_run_and_depends_on_the_seed():
    kw = dict(sizes=[1000, 300], weights=[1.0, 1.0], batch_size=4, max_steps=2500, accumulation=1)
    full = _flat(MixtureSampler(**kw, seed=1))
    tail = _flat(MixtureSampler(**kw, seed=1, start_step=2000))  # crosses several 4096-position blocks
    assert tail == full[2000 * 4 :]
    assert _flat(MixtureSampler(**kw, seed=2))[:50] != full[:50]
    first_epoch = [r for s, r, _ in full if s == 1][:300]
    assert sorted(first_epoch) == list(range(300)) and first_epoch != list(range(300))  # shuffled, no repeats
