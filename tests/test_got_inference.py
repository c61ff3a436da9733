"""GOT-OCR2 behaviour in the inference pipeline, on a tiny random-weight model of the got-ocr2 preset.

Prompts are checked string for string against GOT's demo format (conformance README, GOT section); the
fine-grained, n-gram and multi-crop options through the Pipeline, `vary ocr` and the HTTP form. Outputs of
random weights are meaningless, but greedy decoding is deterministic, so plumbing is compared exactly.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image
from transformers import NoRepeatNGramLogitsProcessor
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas
from typer.testing import CliRunner

import vary
from test_fast_path import counted_calls
from tests_paths import CONFORMANCE_DIR
from vary.cli import app as cli_app
from vary.infer.generation import NoRepeatNGram
from vary.infer.pipeline import Pipeline
from vary.modeling.processor import VaryProcessor, normalize, tile_grid
from vary.modeling.tokenizer import QWEN_SPECIAL_TOKENS
from vary.modeling.vary import VaryForCausalLM
from vary.prompts import PROMPT_STYLES, PromptError, box_to_grid, parse_box

TILE = 128  # the tiny model's image size: 128px -> 2x2 = 4 image tokens per tile
GOT_SYSTEM = (
    "<|im_start|>system\nYou should follow the instructions carefully and explain your answers in detail."
    "<|im_end|><|im_start|>user\n"
)


def got_prompt(query: str, pads: int) -> str:
    """GOT's demo prompt (conformance README): image block, a newline, the query, then the assistant turn."""
    return f"{GOT_SYSTEM}<img>{'<imgpad>' * pads}</img>\n{query}<|im_end|><|im_start|>assistant\n"


def write_qwen_ranks(folder: Path) -> int:
    """A miniature QWen tiktoken file: 256 byte tokens + a few merges; the 217 specials follow. Returns its size."""
    ranks = [bytes([b]) for b in range(256)] + [b"OC", b"OCR", b" with", b"format", b"red", b"im"]
    lines = [f"{base64.b64encode(token).decode()} {i}" for i, token in enumerate(ranks)]
    (folder / "qwen.tiktoken").write_text("\n".join(lines) + "\n")
    return len(ranks)


def make_got_model_dir(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    first_special = write_qwen_ranks(folder)
    special = {name: first_special + QWEN_SPECIAL_TOKENS.index(token) for name, token in
               (("image_start_token_id", "<img>"), ("image_end_token_id", "</img>"),
                ("image_patch_token_id", "<imgpad>"))}  # fmt: skip
    config = vary.preset(
        "got-ocr2",
        vision_config=dict(image_size=TILE, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           window_size=4, global_attn_indexes=[1], output_channels=16),
        downsample_channels=[16, 32],
        image_token_len=(TILE // 64) ** 2,
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=first_special + len(QWEN_SPECIAL_TOKENS),
                         max_position_embeddings=2048, bos_token_id=first_special, eos_token_id=first_special,
                         pad_token_id=first_special),
        **special,
    )  # fmt: skip
    torch.manual_seed(seed)
    VaryForCausalLM(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def got_dir(tmp_path_factory) -> Path:
    return make_got_model_dir(tmp_path_factory.mktemp("tiny_got"))


@pytest.fixture(scope="module")
def got(got_dir) -> Pipeline:
    return Pipeline.from_pretrained(got_dir, max_new_tokens=12)


@pytest.fixture(scope="module")
def vary_pipe(tiny_model_dir) -> Pipeline:
    return Pipeline.from_pretrained(tiny_model_dir, max_new_tokens=8)


def page(width: int, height: int, seed: int = 0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Recorder:
    """Wraps a pipeline's batch building and model.generate: the prompts sent and the sequences returned."""

    def __init__(self, pipe: Pipeline, monkeypatch):
        self.batches, self.sequences = [], []
        build, generate = pipe._batch, pipe.model.generate

        def record_batch(*args, **kwargs):
            batch = build(*args, **kwargs)
            self.batches.append(batch)
            return batch

        def record_generate(*args, **kwargs):
            sequences = generate(*args, **kwargs)
            self.sequences.append(sequences)
            return sequences

        monkeypatch.setattr(pipe, "_batch", record_batch)
        monkeypatch.setattr(pipe.model, "generate", record_generate)
        self.tokenizer = pipe.processor.tokenizer

    def prompts(self) -> list[str]:
        """Every prompt sent, padding removed, as text."""
        return [
            self.tokenizer.decode(ids[mask.bool()])
            for batch in self.batches
            for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
        ]


# --- prompts ----------------------------------------------------------------------------------------------
def test_got_preset_and_config_round_trip_carry_the_prompt_style(got):
    assert vary.preset("got-ocr2").prompt_style == "got"
    assert vary.preset("vary-base-qwen").prompt_style == "vary"  # Vary keeps its prompts
    assert got.model.config.prompt_style == "got" and got.info()["prompt_style"] == "got"
    with pytest.raises(ValueError, match="prompt_style must be one of"):
        vary.preset("got-ocr2", prompt_style="nougat")


@pytest.mark.parametrize("task, query", [("ocr", "OCR: "), ("markdown", "OCR with format: ")])
def test_got_task_prompts_match_gots_demo_without_bos(got, task, query):
    processor = got.processor
    text = processor.prompt(got.instruction(task))
    assert text == got_prompt(query, pads=4)
    ids = processor.prompt_ids(got.instruction(task))
    assert ids[0] == processor.tokenizer.convert_tokens_to_ids("<|im_start|>")  # no BOS
    assert processor.tokenizer.decode(ids) == text


def test_vary_models_keep_their_prompts(vary_pipe, tiny_model_dir):
    assert vary_pipe.instruction("markdown") == "Convert the image to markdown format."
    config = vary.preset("vary-toy")
    processor = VaryProcessor(config, None)
    assert "</img>Provide the OCR results of this image.<|im_end|>" in processor.prompt(
        "Provide the OCR results of this image."
    )


GOT_CASES = sorted(CONFORMANCE_DIR.glob("got_ocr2_*/case.json"))


@pytest.mark.skipif(not GOT_CASES, reason="no GOT-OCR2 conformance cases in $VARY_CONFORMANCE_DIR")
def test_got_prompt_equals_the_official_demo_prompt():
    """The prompt text the official GOT code built for the conformance cases (same query -> same text)."""
    tasks = {query: task for task, query in PROMPT_STYLES["got"].tasks.items()}
    for path in GOT_CASES:
        prompt = json.loads(path.read_text())["prompt"]
        config = vary.preset("got-ocr2")
        assert (
            VaryProcessor(config, None).prompt(PROMPT_STYLES["got"].instruction(tasks[prompt["query"]]))
            == prompt["text"]
        )


@pytest.mark.parametrize("task", ["chart", "ask"])
def test_tasks_got_was_not_trained_for_are_refused_in_one_line(got, task):
    with pytest.raises(PromptError, match=r"supports tasks ocr, markdown, not .*charts.* with task markdown") as err:
        got.run(page(64, 64), task, question="what?" if task == "ask" else None)
    assert "\n" not in str(err.value)


# --- fine-grained prompts -----------------------------------------------------------------------------------
def test_box_is_put_on_gots_0_1000_grid_by_truncation():
    # int(x / w * 1000) as GOT's demo: 100/300*1000 = 333.33 -> 333, 250/600*1000 = 416.67 -> 416
    assert box_to_grid((100, 250, 299, 600), 300, 600) == [333, 416, 996, 1000]
    assert parse_box("10, 20,30,40.5") == (10.0, 20.0, 30.0, 40.5)
    for bad in ("1,2,3", "a,b,c,d", ""):
        with pytest.raises(PromptError, match="four numbers"):
            parse_box(bad)
    with pytest.raises(PromptError, match="not inside"):
        box_to_grid((0, 0, 400, 10), 300, 600)
    with pytest.raises(PromptError, match="x1 < x2"):
        box_to_grid((50, 0, 40, 10), 300, 600)


def test_box_and_colour_prompts_as_got_builds_them(got, monkeypatch):
    recorder = Recorder(got, monkeypatch)
    images = [page(300, 600, 1), page(600, 900, 2)]
    got.run_batch(images, "ocr", box=(100, 250, 299, 600), batch_size=2)
    got.markdown(page(64, 64), color="red")
    assert recorder.prompts() == [
        got_prompt("[333, 416, 996, 1000] OCR: ", 4),  # each image's box on its own size
        got_prompt("[166, 277, 498, 666] OCR: ", 4),
        got_prompt("[red] OCR with format: ", 4),
    ]


def test_fine_grained_options_are_refused_where_unsupported(got, vary_pipe):
    with pytest.raises(PromptError, match="no fine-grained"):
        vary_pipe.ocr(page(64, 64), box=(0, 0, 10, 10))
    with pytest.raises(PromptError, match="no fine-grained"):
        vary_pipe.ocr(page(64, 64), color="red")
    with pytest.raises(PromptError, match="no multi-crop"):
        vary_pipe.ocr(page(64, 64), crop=True)
    with pytest.raises(PromptError, match="cannot be combined"):
        got.ocr(page(64, 64), box=(0, 0, 10, 10), color="red")
    with pytest.raises(PromptError, match="colour must be one of red, green, blue"):
        got.ocr(page(64, 64), color="purple")
    with pytest.raises(PromptError, match="multi-crop mode has no box"):
        got.ocr(page(64, 64), color="blue", crop=True)


# --- no_repeat_ngram_size ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 4, 20])
def test_no_repeat_ngram_matches_transformers(n):
    generator = torch.Generator().manual_seed(n)
    for length in (1, n - 1, n, 3 * n + 5, 200):
        ids = torch.randint(0, 4, (3, max(length, 1)), generator=generator)
        if length >= 2 * n:  # make sure some n-grams repeat, also in the long-n case
            ids[:, length // 2 : length // 2 + n] = ids[:, :n]
        scores = torch.randn(3, 6, generator=generator)
        expected = NoRepeatNGramLogitsProcessor(n)(ids, scores.clone())
        assert torch.equal(NoRepeatNGram(n)(ids, scores.clone()), expected)
    assert torch.isinf(expected).any() or n == 20  # the comparison covers bans, not only no-ops


def repeats_an_ngram(sequence: list[int], start: int, n: int) -> bool:
    """Whether any token from `start` on completes an n-gram that already occurred earlier in the sequence."""
    seen = {tuple(sequence[i : i + n]) for i in range(start - n + 1)}
    for end in range(start, len(sequence)):
        gram = tuple(sequence[end - n + 1 : end + 1])
        if gram in seen:
            return True
        seen.add(gram)
    return False


def test_got_defaults_to_no_repeat_ngram_20_and_it_is_applied(got, vary_pipe, monkeypatch):
    assert got.no_repeat_ngram_size() == 20 and vary_pipe.no_repeat_ngram_size() == 0
    got.model.generation_config.no_repeat_ngram_size = 7  # a checkpoint's generation_config wins over the style
    assert got.no_repeat_ngram_size() == 7
    got.model.generation_config.no_repeat_ngram_size = None
    recorder = Recorder(got, monkeypatch)
    unguarded = dataclasses.replace(got.settings.loop_guard, enabled=False)
    image, free = page(64, 64), dict(max_new_tokens=40, loop_guard=unguarded)
    got.ocr(image, no_repeat_ngram_size=0, **free)
    got.ocr(image, no_repeat_ngram_size=2, **free)
    prompt_length = recorder.batches[0]["input_ids"].shape[1]
    unbanned, banned = (s[0].tolist() for s in recorder.sequences)
    assert repeats_an_ngram(unbanned, prompt_length, 2)  # random weights repeat bigrams without the ban ...
    assert not repeats_an_ngram(banned, prompt_length, 2)  # ... and never with it


# --- multi-crop -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "size, max_tiles, grid",
    [((1000, 1000), 6, (1, 1)),  # square and small: one tile (no thumbnail)
     ((2100, 2100), 6, (2, 2)),  # 1:1 ties (1,1) and (2,2): over half of 4 tiles' area -> (2,2)
     ((1449, 1449), 6, (2, 2)), ((1448, 1448), 6, (1, 1)),  # the tie's area boundary: 2 * 1024^2 pixels
     ((1000, 3000), 6, (1, 3)), ((3000, 1000), 6, (3, 1)),  # exact 1:3 and 3:1
     ((800, 2000), 6, (1, 3)),  # 0.4: 1/3 is 0.067 away, 1/2 is 0.1 away
     ((1500, 1000), 6, (3, 2)),  # exact 3:2 -> 6 tiles
     ((1000, 10000), 6, (1, 6)),  # very tall: the tallest grid
     ((1500, 1000), 2, (2, 1)), ((900, 600), 2, (1, 1))],  # 1.5 ties 1:1 and 2:1; only the big page takes 2:1
)  # fmt: skip
def test_tile_grid_hand_computed(size, max_tiles, grid):
    assert tile_grid(*size, tile_size=1024, max_tiles=max_tiles) == grid


def test_tile_grid_agrees_with_transformers_got_ocr2():
    generator = torch.Generator().manual_seed(0)
    for width, height in torch.randint(50, 5000, (300, 2), generator=generator).tolist():
        for max_tiles in (1, 2, 6, 9):
            ours = tile_grid(width, height, 1024, max_tiles)
            assert ours == get_optimal_tiled_canvas((height, width), (1024, 1024), 1, max_tiles), (width, height)


def test_crop_tensors_are_row_major_tiles_then_a_thumbnail(got):
    processor = got.processor
    image = page(100, 300)  # 1:3 -> one column of 3 tiles + the thumbnail
    tiles = processor.crop_tensors(image)
    assert tiles.shape == (4, 3, TILE, TILE)
    grid = image.resize((TILE, 3 * TILE), Image.Resampling.BICUBIC)
    config = got.model.config
    for row in range(3):
        tile = grid.crop((0, row * TILE, TILE, (row + 1) * TILE))
        assert torch.equal(tiles[row], normalize(tile, config.image_mean, config.image_std))
    assert torch.equal(tiles[3], processor.image_tensor(image.resize((TILE, TILE), Image.Resampling.BICUBIC)))
    wide = processor.crop_tensors(page(2 * TILE, TILE))  # 2:1 -> left, right, thumbnail
    grid = page(2 * TILE, TILE)
    right = normalize(grid.crop((TILE, 0, 2 * TILE, TILE)), config.image_mean, config.image_std)
    assert wide.shape[0] == 3 and torch.equal(wide[1], right)
    assert processor.crop_tensors(page(TILE, TILE)).shape[0] == 1  # one tile: no thumbnail


def test_crop_prompt_holds_every_tile_in_one_image_block(got, monkeypatch):
    recorder = Recorder(got, monkeypatch)
    got.markdown(page(100, 300), crop=True)
    got.ocr(page(100, 300), crop=True, max_tiles=2)  # 1:2 at most -> 2 tiles + thumbnail
    batch = recorder.batches[0]
    assert recorder.prompts() == [
        got_prompt("OCR with format upon the patch reference: ", pads=4 * 4),
        got_prompt("OCR upon the patch reference: ", pads=3 * 4),
    ]
    assert batch["pixel_values"].shape == (4, 3, TILE, TILE)
    assert recorder.batches[1]["pixel_values"].shape == (3, 3, TILE, TILE)


def test_tiles_are_spliced_in_order_into_the_one_block(got):
    """Tile k's features land on the k-th run of image_token_len <imgpad> embeddings of the block."""
    model, processor = got.model, got.processor
    batch = processor([page(100, 300)], got.instruction("ocr", crop=True), crop=True)
    ids = batch["input_ids"]
    with torch.no_grad():
        features = model.encode_images(batch["pixel_values"])  # (4, 4, H)
        embeds = model.splice_image_features(ids, model.get_input_embeddings()(ids), features)
    positions = (ids[0] == model.config.image_patch_token_id).nonzero().flatten()
    assert len(positions) == 16 and torch.equal(positions, torch.arange(16) + positions[0])  # one contiguous run
    assert torch.equal(embeds[0, positions], features.reshape(16, -1))


def test_crop_generates_end_to_end_and_batches_mixed_tile_counts(got, monkeypatch):
    """A tall page (4 tiles), a square one (1) and a wide one (3) in one batch = each page on its own; the
    left-padded batch decodes on the fast path's lean step."""
    recorder = Recorder(got, monkeypatch)
    lean_steps = counted_calls(monkeypatch, "qwen2_decode_step")
    pages = [page(100, 300, 1), page(TILE, TILE, 2), page(260, 130, 3)]
    batched = got.run_batch(pages, "ocr", crop=True, batch_size=3)
    assert recorder.batches[0]["attention_mask"].min() == 0 and len(lean_steps) > 0
    singles = [got.ocr(image, crop=True) for image in pages]
    assert recorder.batches[0]["pixel_values"].shape[0] == 4 + 1 + 3
    prompt_length = recorder.batches[0]["input_ids"].shape[1]
    batched_ids = [row[prompt_length:].tolist() for row in recorder.sequences[0]]
    for i, single in enumerate(singles):
        length = recorder.batches[i + 1]["input_ids"].shape[1]
        single_ids = recorder.sequences[i + 1][0, length:].tolist()
        assert batched_ids[i][: len(single_ids)] == single_ids
        assert batched[i].num_tokens == single.num_tokens > 0


def test_pipeline_wide_crop_default_and_per_call_override(got_dir, monkeypatch):
    pipe = Pipeline.from_pretrained(got_dir, max_new_tokens=2, crop=True, max_tiles=2)
    recorder = Recorder(pipe, monkeypatch)
    pipe.ocr(page(100, 300))
    pipe.ocr(page(100, 300), crop=False)
    assert [b["pixel_values"].shape[0] for b in recorder.batches] == [3, 1]
    assert "patch reference" in recorder.prompts()[0] and "patch reference" not in recorder.prompts()[1]


def test_stream_takes_the_same_options(got):
    stream = got.stream(page(100, 300), "markdown", crop=True, max_new_tokens=4)
    assert "".join(stream).strip() == stream.result.text and stream.result.num_tokens == 4
    with pytest.raises(PromptError):
        got.stream(page(64, 64), "chart")


# --- CLI ----------------------------------------------------------------------------------------------------
def invoke(*args):
    return CliRunner().invoke(cli_app, ["ocr", *map(str, args)])


def test_cli_got_options(got_dir, tmp_path):
    image = tmp_path / "tall.png"
    image.write_bytes(png(page(100, 300)))
    fast = ["--model", got_dir, "--max-new-tokens", "3"]
    for options in (["--crop", "--crop-max-tiles", "2"], ["--box", "0,0,50,150"], ["--color", "green"],
                    ["--task", "markdown", "--no-repeat-ngram-size", "0"]):  # fmt: skip
        result = invoke(image, *fast, *options)
        assert result.exit_code == 0, (options, result.output)
        assert "1 page(s)" in result.stderr
    for options, message in ((["--box", "1,2,3"], "four numbers"), (["--color", "pink"], "pink"),
                             (["--task", "chart"], "supports tasks ocr, markdown"),
                             (["--box", "0,0,500,10"], "not inside")):  # fmt: skip
        result = invoke(image, *fast, *options)
        assert result.exit_code == 2, (options, result.output)
        assert message in result.output and "Traceback" not in result.output


def test_cli_suggests_int8_for_large_float32_models_on_cpu(got_dir, tmp_path, monkeypatch):
    """One tip line for a float32 CPU run of a large language model; none with --quantize int8 or a small one."""
    from vary.infer import cli as infer_cli

    image = tmp_path / "page.png"
    image.write_bytes(png(page(TILE, TILE)))
    args = ["--model", got_dir, "--max-new-tokens", "2"]
    assert "--quantize int8" not in invoke(image, *args).stderr  # the tiny model is far below the threshold
    monkeypatch.setattr(infer_cli, "INT8_TIP_MIN_PARAMS", 0)  # as if it were GOT-OCR2's 0.5 B
    result = invoke(image, *args)
    assert result.exit_code == 0 and result.stderr.count("tip: --quantize int8") == 1, result.output
    result = invoke(image, *args, "--quantize", "int8")
    assert result.exit_code == 0 and "tip:" not in result.stderr, result.output


def test_cli_crop_renders_pdf_pages_large_enough_for_the_tiles(got_dir, tmp_path, monkeypatch):
    from test_infer_documents import make_pdf

    sizes = []
    crop_tensors = VaryProcessor.crop_tensors

    def record(self, image, max_tiles=6):
        sizes.append(image.size)
        return crop_tensors(self, image, max_tiles)

    monkeypatch.setattr(VaryProcessor, "crop_tensors", record)
    (tmp_path / "a4.pdf").write_bytes(make_pdf(1))  # 595 x 842 pt
    result = invoke(tmp_path / "a4.pdf", "--model", got_dir, "--crop", "--max-new-tokens", "2")
    assert result.exit_code == 0, result.output
    assert sizes == [(2171, 3072)]  # longest side CROP_RENDER_SIZE: a 2x3 grid of 1024 px tiles, not upscaled
    assert tile_grid(*sizes[0], tile_size=1024) == (2, 3)


def test_cli_refuses_got_options_for_vary_models(tiny_model_dir, tmp_path):
    image = tmp_path / "page.png"
    image.write_bytes(png(page(64, 64)))
    result = invoke(image, "--model", tiny_model_dir, "--crop", "--max-new-tokens", "2")
    assert result.exit_code == 2 and "error: " in result.stderr and "no multi-crop" in result.stderr


# --- HTTP form ------------------------------------------------------------------------------------------------
@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_server_form_fields(got, vary_pipe, monkeypatch):
    from vary.serve.app import create_app

    recorder = Recorder(got, monkeypatch)
    image = png(page(100, 300))

    async def post(pipe, path="/v1/ocr", **fields):
        transport = httpx.ASGITransport(app=create_app(pipe))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            data = {k: str(v) for k, v in fields.items()}
            return await client.post(path, files={"file": ("tall.png", image)}, data=data)

    response = await post(got, crop="true", max_tiles=2, max_new_tokens=2)
    assert response.status_code == 200, response.text
    response = await post(got, box="0,0,50,150", max_new_tokens=2)
    assert response.status_code == 200, response.text
    response = await post(got, "/v1/ocr/stream", color="blue", task="markdown", max_new_tokens=2)
    assert response.status_code == 200 and "event: done" in response.text
    assert [b["pixel_values"].shape[0] for b in recorder.batches] == [3, 1, 1]
    prompts = recorder.prompts()
    assert "patch reference" in prompts[0] and "[0, 0, 500, 500] OCR: " in prompts[1]
    assert "[blue] OCR with format: " in prompts[2]
    for pipe, fields, message in ((got, dict(box="1,2"), "four numbers"), (got, dict(task="ask", question="q"),
                                  "supports tasks"), (got, dict(box="0,0,999,10"), "not inside"),
                                  (vary_pipe, dict(color="red"), "no fine-grained"), (got, dict(color="pink"), "color")):  # fmt: skip
        response = await post(pipe, **fields)
        assert response.status_code == 422 and message in response.json()["error"], (fields, response.text)


def test_prompt_styles_are_data():
    got_style = PROMPT_STYLES["got"]
    assert got_style.tasks == {"ocr": "OCR: ", "markdown": "OCR with format: "}
    assert got_style.image_separator == "\n" and got_style.no_repeat_ngram_size == 20
    assert PROMPT_STYLES["vary"].image_separator == "" and not PROMPT_STYLES["vary"].fine_grained
