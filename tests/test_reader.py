"""The reader design (preset "reader"): conv vision vocabulary, CTC reading head, line labels from glyph boxes,
training with both losses, and OCR through the reading head in the pipeline."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from vary.config import preset
from vary.data.dataset import Collator, Conversation, line_labels_for
from vary.data.generators.blocks import BlocksGenerator
from vary.infer import pipeline as pipeline_module
from vary.infer.pipeline import Pipeline
from vary.modeling.conv_vocab import greedy_rows, letter_tokens, merge_rows, reading_loss, wide_tokens
from vary.modeling.lexicon import Lexicon, LexiconReader
from vary.modeling.loading import convert
from vary.modeling.processor import VaryProcessor
from vary.modeling.tokenizer import train_char_tokenizer
from vary.modeling.vary import VaryForCausalLM
from vary.prompts import CHART_ANSWER_PREFIX, NATURE_SENTENCES

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["The quick brown fox jumps over the lazy dog.", "中文文本识别，图表转换为字典。", "0123456789 ABCDEFGHIJ"]


def tiny_reader(vocab_size: int, image_size: int = 64, **overrides):
    """64 px -> a 4 x 8 grid -> 8 tokens; conv widths 8-16, a 2-layer LM of width 32."""
    rows, columns = image_size // 16, image_size // 8
    return preset(
        "reader", vision_config=dict(image_size=image_size), **{"conv_channels": [8, 8, 16, 16], **overrides},
        image_token_len=rows * columns // 4,
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64,
                         word_embed_proj_dim=32, vocab_size=vocab_size, max_position_embeddings=256),
    )  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    return train_char_tokenizer(TEXTS * 3, vocab_size=128)


def test_config_checks_the_conv_shapes():
    config = preset("reader")
    assert config.reading_grid == (24, 48) and config.image_token_len == 288 and config.vision_feature_dim == 1024
    with pytest.raises(ValueError, match="image_token_len=100"):
        preset("reader", image_token_len=100)
    with pytest.raises(ValueError, match="needs vision_encoder='conv'"):
        preset("nano", reading_head=True)
    with pytest.raises(ValueError, match="needs reading_head=true"):
        preset("reader", reading_head=False, ocr_reader="reading_head")
    with pytest.raises(ValueError, match="ocr_reader must be"):
        preset("reader", ocr_reader="ctc")


def test_grid_tokens_and_any_image_size(tokenizer):
    model = VaryForCausalLM(tiny_reader(len(tokenizer))).eval()
    vocab = model.vision_vocab
    grid = vocab.grid(torch.randn(2, 3, 64, 64))
    assert grid.shape == (2, 16, 4, 8)
    tokens = vocab.pack(grid)
    assert tokens.shape == (2, 8, 64)
    # token 0 of row 1 holds cells 0..3 of grid row 1, channel-last in cell order
    assert torch.equal(tokens[0, 2], grid[0, :, 1, 0:4].T.reshape(-1))
    assert model.encode_images(torch.randn(2, 3, 64, 64)).shape == (2, 8, 32)
    # the reading head reads a canvas of any size (a page read whole): 128 x 192 px -> 8 rows x 24 cells
    assert vocab.grid(torch.randn(1, 3, 128, 192)).shape == (1, 16, 8, 24)
    assert len(model.read_lines(torch.randn(1, 3, 128, 192))) == 1


def blocks_conversation(lang: str, seed: int, size: int = 256, lines: str = "2-4", **options) -> Conversation:
    source = BlocksGenerator(1, lang=lang, size=size, lines=lines, boxes=True, **{"font": "0.06-0.08", **options})
    sample = source.make(0, random.Random(seed))
    return Conversation("k", sample.image, [("", sample.target)], sample.kind, sample.meta)


def decode_labels(labels: torch.Tensor, tok) -> list[str]:
    """What best-path decoding reads from a perfect head: the labels as one-hot logits."""
    logits = torch.nn.functional.one_hot(labels, len(tok)).float()[None] * 10
    return [tok.decode(ids) for ids in merge_rows(greedy_rows(logits, tok.pad_token_id)[0])]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_line_labels_give_each_band_the_line_its_centre_falls_in(lang):
    conv = blocks_conversation(lang, seed=3)
    lines = conv.turns[0][1].split("\n")
    tok = train_char_tokenizer([conv.turns[0][1]], vocab_size=512)
    labels = line_labels_for(conv, tok, 16, 64)
    assert labels.shape == (16, 64)
    band = conv.image.height / 16
    boxes, start, spans = conv.meta["char_boxes"], 0, []
    for line in lines:
        line_boxes = boxes[start : start + len(line)]
        start += len(line)
        spans.append((min(b[1] for b in line_boxes), max(b[3] for b in line_boxes), line))
    read_rows = 0
    for r, row in enumerate(labels):
        y = (r + 0.5) * band
        inside = [text for top, bottom, text in spans if top <= y <= bottom]
        row_text = tok.decode([t for t in row.unique_consecutive().tolist() if t != tok.pad_token_id])
        assert row_text in (inside or [""])
        read_rows += bool(row_text)
    assert read_rows > len(lines)  # type taller than a band: lines span several bands
    assert decode_labels(labels, tok) == lines  # a perfect head reads the block back, line by line


def test_equal_letters_side_by_side_stay_apart():
    from vary.data.fonts import draw_text, find_fonts, load_font

    font, boxes = load_font(find_fonts("en", "regular")[0], 16), []
    image = Image.new("L", (256, 256), 255)
    draw_text(image, (10, 100), "all -- good", font, 0, boxes)
    conv = Conversation("k", image, [("", "all -- good")], "blocks", {"char_boxes": boxes})
    tok = train_char_tokenizer(["all -- good"], vocab_size=64)
    assert decode_labels(line_labels_for(conv, tok, 16, 64), tok) == ["all -- good"]


def test_line_labels_without_boxes_for_photographs_and_for_a_bpe_tokenizer():
    tok = train_char_tokenizer(TEXTS, vocab_size=128)
    page = Conversation("p", Image.new("L", (64, 64), 255), [("", "text")], "pages", {})
    photo = Conversation("n", Image.new("RGB", (64, 64)), [("", "It's a photo.")], "natural", {})
    assert (line_labels_for(page, tok, 4, 8) == -100).all()
    assert (line_labels_for(photo, tok, 4, 8) == tok.pad_token_id).all()
    bad = blocks_conversation("en", seed=1)
    bad.meta["char_boxes"] = bad.meta["char_boxes"][:-1]
    with pytest.raises(Exception, match="line_boxes"):
        line_labels_for(bad, tok, 4, 8)
    from conftest import TOKENIZER_TEXT
    from vary.modeling.tokenizer import train_bpe_tokenizer

    bpe = train_bpe_tokenizer(TOKENIZER_TEXT * 20, vocab_size=400)
    with pytest.raises(ValueError, match="one token per character"):
        line_labels_for(blocks_conversation("en", seed=1), bpe, 4, 8)


def test_reading_loss_leaves_out_unknown_frames_and_counts_character_frames():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 10, requires_grad=True)
    labels = torch.zeros(2, 3, 8, dtype=torch.long)
    labels[0, 1, 2:5] = torch.tensor([4, 4, 6])
    labels[1] = -100  # image 1: lines unknown
    loss, chars = reading_loss(logits, labels, blank=0)
    assert chars == 3 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[0].abs().sum() > 0
    zero, n = reading_loss(logits[1:], labels[1:], blank=0)
    assert n == 0 and float(zero.detach()) == 0.0


def one_hot_rows(paths: list[list[int]], vocab: int = 10) -> torch.Tensor:
    logits = torch.full((1, len(paths), len(paths[0]), vocab), -10.0)
    for r, path in enumerate(paths):
        for c, token in enumerate(path):
            logits[0, r, c, token] = 10.0
    return logits


def test_greedy_rows_collapse_repeats_and_blanks():
    logits = one_hot_rows([[0, 0, 0, 0, 0, 0], [3, 3, 0, 3, 4, 4], [0, 5, 0, 0, 6, 0]])
    rows = greedy_rows(logits, blank=0)[0]
    assert [(r, ids, frames) for r, ids, _, frames in rows] == [(1, [3, 3, 4], [0, 3, 4]), (2, [5, 6], [1, 4])]


def test_a_run_of_wide_glyph_frames_is_one_character_the_run_likes_best():
    # tokens 5, 6 are wide (CJK); 3, 4 narrow. Row 0: one wide glyph split between 5 and 6 over four frames,
    # 6 surer overall; then a narrow run that keeps its best path. Row 1: no wide token, plain best path.
    logits = one_hot_rows([[0, 5, 6, 6, 5, 0, 3, 4, 0, 6], [0, 3, 3, 0, 4, 0, 0, 0, 0, 0]])
    logits[0, 0, 1, 6] = 9.0  # frame 1 also likes 6 a little less than 5
    wide = torch.zeros(10, dtype=torch.bool)
    wide[[5, 6]] = True
    rows = greedy_rows(logits, blank=0, wide=wide)[0]
    assert [(r, ids, frames) for r, ids, _, frames in rows] == [(0, [6, 3, 4, 6], [1, 6, 7, 9]), (1, [3, 4], [1, 4])]
    plain = greedy_rows(logits, blank=0, lookalike_nats=0)[0]
    assert [(r, ids) for r, ids, *_ in plain][0] == (0, [5, 6, 5, 3, 4, 6])  # without
    tok = train_char_tokenizer(TEXTS, vocab_size=128)
    marked = {t for t, i in tok.get_vocab().items() if wide_tokens(tok, len(tok))[i]}
    assert {"中", "，", "。"} <= marked and not marked & set("The quick 0123456789")


def test_touching_lookalikes_are_one_glyph_and_sure_neighbours_stay_two():
    # Row 0: frames 1-3 are one glyph the head split between 5 and 6 (frame 1 likes 6 nearly as much as 5):
    # one character, 6, the likelier over the three frames. Then 3 and 4 touch, each sure of itself: two glyphs.
    # Row 1: 7, 8, 7 touching and each frame torn between 7 and 8: one glyph, 7.
    logits = one_hot_rows([[0, 5, 6, 6, 0, 3, 4, 0, 0], [0, 7, 8, 7, 0, 0, 0, 0, 0]])
    logits[0, 0, 1, 6] = 9.5
    logits[0, 1, 1:4, 7] = torch.tensor([10.0, 9.5, 10.0])
    logits[0, 1, 1:4, 8] = torch.tensor([9.5, 10.0, 9.5])
    rows = greedy_rows(logits, blank=0)[0]
    assert [(r, ids, frames) for r, ids, _, frames in rows] == [(0, [6, 3, 4], [1, 5, 6]), (1, [7], [1])]
    plain = greedy_rows(logits, blank=0, lookalike_nats=0)[0]
    assert [(r, ids) for r, ids, *_ in plain] == [(0, [5, 6, 3, 4]), (1, [7, 8, 7])]


def test_a_double_letter_read_as_one_run_is_split_where_the_blank_peaks_inside_it():
    # Row 0: letter 3 over five frames, the blank likelier at frame 3 (p ~ 0.3) than at its neighbours: two 3s.
    # Letter 4 over three frames with a blank under the threshold (p ~ 0.01): one. Row 1: the same dip inside a
    # run of a wide glyph (5) and of a mark that is no letter (7), and at frame 7 of a letter run where the blank
    # is higher still next door (not a peak): all stay one.
    logits = one_hot_rows([[0, 3, 3, 3, 3, 3, 0, 4, 4, 4, 0], [0, 5, 5, 5, 0, 7, 7, 7, 3, 3, 3]])
    logits[0, 0, 3, 0] = 9.2  # blank at ~0.3 of frame 3
    logits[0, 0, 8, 0] = 5.4  # ~0.01
    logits[0, 1, 2, 0] = logits[0, 1, 6, 0] = 9.2
    logits[0, 1, 9, 0] = 9.5
    logits[0, 1, 8, 0] = 9.6  # the blank's peak is frame 8, at the run's edge, not inside it
    letters = torch.zeros(10, dtype=torch.bool)
    letters[[3, 4]] = True
    wide = torch.zeros(10, dtype=torch.bool)
    wide[5] = True
    rows = greedy_rows(logits, blank=0, wide=wide, letters=letters, double_blank=0.05)[0]
    assert [(r, ids, frames) for r, ids, _, frames in rows] == [(0, [3, 3, 4], [1, 4, 7]), (1, [5, 7, 3], [1, 5, 8])]
    assert [ids for _, ids, *_ in greedy_rows(logits, blank=0, wide=wide)[0]] == [[3, 4], [5, 7, 3]]  # no letters
    assert [ids for _, ids, *_ in greedy_rows(logits, 0, wide, letters=letters, double_blank=0.0)[0]] == [
        [3, 4],
        [5, 7, 3],
    ]
    assert [ids for _, ids, *_ in greedy_rows(logits, 0, wide, letters=letters, double_blank=0.5)[0]] == [
        [3, 4],
        [5, 7, 3],
    ]
    tok = train_char_tokenizer(TEXTS + ["──__"], vocab_size=128)
    marked = {t for t, i in tok.get_vocab().items() if letter_tokens(tok, len(tok))[i]}
    assert set("Thequickbrownfox0123456789") <= marked and not marked & set("中，。.─_ ")
    with pytest.raises(ValueError, match="double_letter_blank"):
        tiny_reader(64, double_letter_blank=1.0)


def test_merge_rows_choose_lines_on_the_plain_reading_and_give_the_split_one():
    """A row that sees half the glyphs can split differently from its neighbour: the lines are still chosen on
    the reading without splits, then given as split."""
    plain = [(1, [3, 4, 5, 6], 0.8), (2, [3, 4, 5, 6], 0.9), (3, [7, 8], 0.9)]
    split = [(1, [3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6], 0.8), (2, [3, 4, 4, 5, 6], 0.9), (3, [7, 8], 0.9)]
    assert merge_rows(split) == [[3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6], [3, 4, 4, 5, 6], [7, 8]]  # as two lines
    assert merge_rows(plain, given=split) == [[3, 4, 4, 5, 6], [7, 8]]
    assert merge_rows(plain) == [[3, 4, 5, 6], [7, 8]]


def test_read_lines_and_rows_give_the_words_the_lexicon_corrects(tokenizer, monkeypatch):
    """The lines are chosen on the plain reading and given with their words corrected; read_rows too."""
    model = VaryForCausalLM(tiny_reader(len(tokenizer))).eval()
    vocab = tokenizer.get_vocab()
    path = [0, vocab["q"], 0, vocab["u"], 0, vocab["i"], 0, vocab["c"], 0, vocab["x"], 0, 0]  # "quicx"
    logits = one_hot_rows([path, [0] * len(path)], vocab=model.config.text_config.vocab_size)
    logits[0, 0, 9, vocab["k"]] = 9.0  # 'k' close behind the 'x'
    monkeypatch.setattr(model, "frame_logits", lambda pixels: logits)
    lexicon = LexiconReader(Lexicon({"quick": 2}), tokenizer, model.config.text_config.vocab_size, nats=4.0)
    pixels = torch.zeros(1, 3, 64, 64)
    assert [tokenizer.decode(ids) for ids in model.read_lines(pixels)[0]] == ["quicx"]
    letters = letter_tokens(tokenizer, model.config.text_config.vocab_size)
    for lines in (model.read_lines(pixels, lexicon=lexicon)[0], model.read_lines(pixels, None, letters, lexicon)[0]):
        assert [tokenizer.decode(ids) for ids in lines] == ["quick"]
    assert [tokenizer.decode(ids) for _, ids, *_ in model.read_rows(pixels, lexicon=lexicon)[0]] == ["quick"]


def test_the_pipeline_reads_with_the_word_list_of_the_model_folder(tokenizer, tmp_path, monkeypatch):
    model = VaryForCausalLM(tiny_reader(len(tokenizer), ocr_reader="reading_head", lexicon_nats=6.0)).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert Pipeline.from_pretrained(tmp_path).lexicon_reader is None  # no lexicon.txt
    Lexicon({"quick": 2, "brown": 2}).save(tmp_path / "lexicon.txt")
    pipe = Pipeline.from_pretrained(tmp_path)
    assert pipe.processor.lexicon.counts == {"quick": 2, "brown": 2} and pipe.lexicon_reader.nats == 6.0
    assert pipe.lexicon_reader.chinese.weight == 0.1  # config.chinese_bigram_weight's default
    assert set(pipe.lexicon_reader.chinese.char_of.values()) == {c for c in "".join(TEXTS) if "\u4e00" <= c <= "\u9fff"}
    seen = []
    monkeypatch.setattr(
        pipe.model, "read_lines", lambda pixels, wide, letters, lexicon: seen.append(lexicon) or [[[7]]]
    )
    pipe.ocr(Image.new("RGB", (64, 64), "white"))
    assert seen == [pipe.lexicon_reader]
    copy = convert(tmp_path, tmp_path / "copy")  # the word list travels with the model
    assert (copy / "lexicon.txt").read_text() == (tmp_path / "lexicon.txt").read_text()
    model.config.chinese_bigram_weight = 0.0  # 0: no Chinese re-ranking
    model.save_pretrained(tmp_path)
    assert Pipeline.from_pretrained(tmp_path).lexicon_reader.chinese is None
    model.config.lexicon_nats = 0.0  # 0: never correct
    model.save_pretrained(tmp_path)
    assert Pipeline.from_pretrained(tmp_path).lexicon_reader is None
    with pytest.raises(ValueError, match="lexicon_nats"):
        tiny_reader(64, lexicon_nats=-1.0)
    with pytest.raises(ValueError, match="chinese_bigram_weight"):
        tiny_reader(64, chinese_bigram_weight=-1.0)


def test_merge_rows_keeps_distinct_neighbours_and_drops_a_duplicate():
    lines = [(1, [3, 4, 5, 6], 0.9), (2, [3, 4, 5, 6], 0.95), (3, [7, 8, 9], 0.8), (5, [1, 2], 0.7)]
    assert merge_rows(lines) == [[3, 4, 5, 6], [7, 8, 9], [1, 2]]
    tall = [(1, [3, 4, 5], 0.9), (2, [3, 4, 5], 0.8), (3, [3, 4, 9], 0.7), (4, [7, 8], 0.9)]  # one line, 3 rows
    assert merge_rows(tall) == [[3, 4, 5], [7, 8]]
    partial = [(1, [3, 4], 0.6), (2, [3, 4, 5, 6, 7, 8], 0.9), (3, [5, 8], 0.5), (4, [9, 9, 9], 0.9), (5, [9], 0.95)]
    assert merge_rows(partial) == [[3, 4, 5, 6, 7, 8], [9, 9, 9], [9]]  # less confident parts merge


def test_reading_head_learns_to_read_a_few_lines(tokenizer):
    """The reading loss alone: a few dozen steps on 4 tiny images and the head reads them back exactly."""
    torch.manual_seed(0)
    convs = [blocks_conversation("en", seed=s, size=64, chars="2-3", font="0.2-0.25") for s in range(4)]
    tok = train_char_tokenizer([c.turns[0][1] for c in convs], vocab_size=64)
    model = VaryForCausalLM(tiny_reader(len(tok), image_size=64, conv_channels=[16, 16, 32, 32]))
    processor = VaryProcessor(model.config, tok)
    pixels = torch.stack([processor.image_tensor(c.image) for c in convs])
    line_labels = torch.stack([line_labels_for(c, tok, 4, 16) for c in convs])
    params = [*model.vision_vocab.parameters(), *model.reading_head.parameters()]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    model.train()
    for _ in range(100):
        grid = model.vision_vocab.grid(pixels)
        loss, _ = reading_loss(model.reading_logits(grid), line_labels, blank=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    read = ["\n".join(tok.decode(ids) for ids in lines) for lines in model.read_lines(pixels)]
    assert read == [c.turns[0][1] for c in convs]


def test_forward_adds_the_reading_loss_and_the_collator_stacks_line_labels(tokenizer):
    model = VaryForCausalLM(tiny_reader(len(tokenizer)))
    processor = VaryProcessor(model.config, tokenizer)

    class Items:  # Collator only needs the dataset for blank examples
        pass

    examples = []
    known = torch.zeros(4, 16, dtype=torch.long)
    known[0, 3:5] = torch.tensor([7, 8])
    for rows in (known, torch.full((4, 16), -100)):
        batch = processor([Image.new("RGB", (64, 64), "white")], "", crop=False)
        examples.append({"input_ids": batch["input_ids"][0].tolist(), "labels": batch["input_ids"][0].tolist(),
                         "truncated": False, "pixel_values": batch["pixel_values"][0], "line_labels": rows})  # fmt: skip
    batch = Collator(Items(), pad_token_id=0)(examples)
    assert batch["line_labels"].shape == (2, 4, 16) and torch.equal(batch["line_labels"][0], known)
    batch.pop("stats")
    out = model(**batch)
    assert out["reading_chars"] == 2 and torch.isfinite(out["reading_loss"])
    out["reading_loss"].backward()
    assert model.reading_head.weight.grad.abs().sum() > 0
    assert next(model.vision_vocab.parameters()).grad.abs().sum() > 0
    assert model.language_model.get_input_embeddings().weight.grad is None  # the CTC loss never reaches the LM


@pytest.fixture()
def reader_pipeline(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = VaryForCausalLM(tiny_reader(len(tokenizer), ocr_reader="reading_head")).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return Pipeline.from_pretrained(tmp_path, max_new_tokens=4)


def test_pipeline_reads_ocr_with_the_head_and_other_tasks_with_the_decoder(reader_pipeline, monkeypatch):
    pipe = reader_pipeline
    image = Image.new("RGB", (64, 64), "white")
    pixels = pipe.processor.image_tensor(image)[None]
    expected = "\n".join(pipe.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
                         for ids in pipe.model.read_lines(pixels, pipe.wide_tokens, pipe.letter_tokens)[0])  # fmt: skip
    result = pipe.ocr(image)
    assert result.task == "ocr"
    if expected:
        assert result.text == expected
    else:  # the head found no text: the decoder answered (at most max_new_tokens tokens)
        assert 1 <= result.num_tokens <= 4
    assert "".join(pipe.stream(image, "ocr")) == result.text
    # crop: the page is read whole at the tile grid's size (a 64 x 128 image -> 1 x 2 tiles -> 64 x 128 px)
    tall = Image.new("RGB", (64, 128), "white")
    canvas, columns, rows = pipe.processor.canvas_tensor(tall)
    assert canvas.shape == (3, 128, 64) and (columns, rows) == (1, 2)
    assert pipe.run(tall, "ocr", crop=True).task == "ocr"
    # markdown has no reading head: it generates (at most max_new_tokens tokens)
    assert pipe.run(image, "markdown").num_tokens <= 4


def test_pipeline_reads_a_bar_chart_with_the_head(reader_pipeline, monkeypatch):
    pipe, tok = reader_pipeline, reader_pipeline.processor.tokenizer

    def row(r, text, first):
        ids = tok.encode(text, add_special_tokens=False)
        return (r, ids, 0.9, [first + 2 * i for i in range(len(ids))])

    # title; y axis 0 / 50 ending at frame 6; values 42 and 7 over bars at frames 21 and 41; their labels
    rows = [row(0, "fox", 28), row(2, "50", 4), row(3, "42", 20), row(5, "7", 41), row(6, "0", 6),
            row(7, "ABC", 19), row(7, "dog", 39)]  # fmt: skip
    monkeypatch.setattr(pipe.model, "read_rows", lambda pixels, *_: [rows for _ in pixels])
    image = Image.new("RGB", (64, 64), "white")
    assert pipe.reads_with_head("chart") and not pipe.reads_with_head("markdown")
    assert pipe.chart(image) == {"title": "fox", "data": {"ABC": 42, "dog": 7}}
    result = pipe.run(image, "chart")
    assert result.task == "chart" and result.startswith(CHART_ANSWER_PREFIX)
    assert "".join(pipe.stream(image, "chart")) == result
    # read at chart_read_scale x the input size (64 px here), frames and rows scaled back for the layout rules
    seen = []
    twice = [(2 * r, ids, conf, [2 * f for f in frames]) for r, ids, conf, frames in rows]
    monkeypatch.setattr(pipe.model, "read_rows", lambda pixels, *_: seen.append(pixels.shape) or [twice])
    monkeypatch.setattr(pipe.model.config, "chart_read_scale", 2.0)
    assert pipe.chart(image) == {"title": "fox", "data": {"ABC": 42, "dog": 7}} and seen[-1][-2:] == (128, 128)
    frame_logits = pipe.model.frame_logits
    monkeypatch.setattr(pipe.model, "frame_logits", lambda pixels: seen.append(pixels.shape) or frame_logits(pixels))
    assert pipe.ocr(image) is not None and seen[-1][-2:] == (64, 64)  # ocr keeps the trained size
    # title, labels and values read again on their own at chart_reread_scale: the labels' band across the image,
    # 3 x 64 px wide plus the white margins; a region around each value
    band = [(1, tok.encode("dog", add_special_tokens=False), 0.9, [57, 63, 69]),
            (1, tok.encode("fox", add_special_tokens=False), 0.9, [117, 123, 129])]  # fmt: skip
    monkeypatch.setattr(pipe.model, "read_rows", lambda pixels, *_: seen.append(pixels.shape) or
                        [band if pixels.shape[-1] == 224 else [] if pixels.shape[-2] != 128 else twice])  # fmt: skip
    monkeypatch.setattr(pipe.model.config, "chart_reread_scale", 3.0)
    del seen[:]
    assert pipe.chart(image) == {"title": "fox", "data": {"dog": 42, "fox": 7}}
    # the chart, then the title (at 0.625 x 3), labels and two values, each at REREAD_ZOOMS' three sizes
    assert len(seen) == 1 + 4 * 3 and seen[2][-1] == 160
    with pytest.raises(ValueError, match="chart_read_scale"):
        tiny_reader(64, chart_read_scale=9)
    with pytest.raises(ValueError, match="chart_reread_scale"):
        tiny_reader(64, chart_reread_scale=0.1)
    with pytest.raises(ValueError, match="lookalike_nats"):
        tiny_reader(64, lookalike_nats=-1)


def test_pipeline_gives_the_layout_rules_the_bars_it_sees(reader_pipeline, monkeypatch):
    pipe = reader_pipeline  # image_size 64: 16 frames and 4 grid rows across
    given = {}
    real = pipeline_module.read_chart
    monkeypatch.setattr(pipeline_module, "read_chart", lambda *args, **kw: given.update(kw) or real(*args, **kw))
    image = Image.new("RGB", (128, 64), "white")
    image.paste((31, 119, 180), (16, 20, 32, 56))  # two bars on one baseline, 16 px wide
    image.paste((31, 119, 180), (80, 32, 96, 56))
    pipe.chart(image)
    assert [(bar.left, bar.right, bar.top, bar.bottom) for bar in given["bars"]] == [
        (2.0, 4.0, 1.25, 3.5),  # x / 128 px x 16 frames, y / 64 px x 4 rows
        (10.0, 12.0, 2.0, 3.5),
    ]
    pipe.chart(Image.new("RGB", (128, 64), "white"))
    assert given["bars"] == []


def test_region_tensor_is_a_part_of_the_image_on_white_margins(reader_pipeline):
    processor = reader_pipeline.processor  # image_size 64
    image = Image.new("RGB", (100, 200), "white")
    image.paste((0, 0, 0), (0, 100, 100, 110))  # a black stripe at half the height
    band, scale = processor.region_tensor(image, (0, 0.5, 1, 0.55), scale=2.0)  # 10 px -> 13 px at 128 wide
    white = band[:, 0, 0].clone()
    assert band.shape == (3, 48, 160) and scale == 2.0  # + 16 px all round, in whole rows (16) and tokens (32)
    assert torch.equal(band[:, :16], white[:, None, None].expand(3, 16, 160))
    assert (band[:, 16:29, 16:144] != white[:, None, None]).all()  # the stripe, resized
    assert torch.equal(band[:, 29:], white[:, None, None].expand(3, 19, 160))
    assert torch.equal(band[:, :, :16], white[:, None, None].expand(3, 48, 16))
    part, _ = processor.region_tensor(image, (0.25, 0.5, 0.5, 0.55), scale=2.0)  # a quarter of the width: 32 px
    assert part.shape == (3, 48, 64) and (part[:, 16:29, 16:48] != white[:, None, None]).all()


# --- training with both losses -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def block_shards(tmp_path_factory):
    from vary.data.engine import GenerateConfig, generate

    out = tmp_path_factory.mktemp("blocks") / "en"
    generate(GenerateConfig("blocks", out, count=12, size=64, progress=False,
                            options={"boxes": "true", "chars": "2-3", "font": "0.2-0.25"}))  # fmt: skip
    return out


def reader_recipe(path, data, out, model_config=None, **data_options):
    import yaml

    config = model_config or {
        "vision_config": {"image_size": 64}, "conv_channels": [8, 8, 16, 16], "image_token_len": 8,
        "text_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "ffn_dim": 64,
                        "word_embed_proj_dim": 32, "vocab_size": 64, "max_position_embeddings": 256},
    }  # fmt: skip
    recipe = {
        "model": {"preset": "reader", "config": config, "tokenizer_type": "chars"},
        "data": {"sources": [{"path": str(data)}], "max_length": 48, "augment": False, "line_labels": True,
                 **data_options},
        "optim": {"lr": 2e-3, "warmup_steps": 1},
        "train": {"output_dir": str(out), "batch_size": 4, "global_batch_size": 4, "max_steps": 3, "save_every": 3},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_trainer_logs_the_reading_loss_and_refuses_what_cannot_train_it(tmp_path, block_shards):
    from vary.train.recipes import RecipeError, load_recipe
    from vary.train.trainer import Trainer, read_log

    recipe = reader_recipe(tmp_path / "r.yaml", block_shards, tmp_path / "run")
    Trainer(load_recipe(recipe), progress=False).train()
    log = read_log(tmp_path / "run" / "log.jsonl")
    assert len(log) == 3 and all(r["reading_loss"] > 0 for r in log)
    model = VaryForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert model.reading_head is not None and model.config.vision_encoder == "conv"

    with pytest.raises(RecipeError, match="data.line_labels needs the plain images"):
        load_recipe(reader_recipe(tmp_path / "a.yaml", block_shards, tmp_path / "a", augment=True))
    no_head = {"vision_config": {"image_size": 64}, "reading_head": False, "conv_channels": [8, 8, 16, 16],
               "image_token_len": 8}  # fmt: skip
    with pytest.raises(RecipeError, match="has none"):
        Trainer(load_recipe(reader_recipe(tmp_path / "b.yaml", block_shards, tmp_path / "b", no_head)),
                progress=False).train()  # fmt: skip


def test_an_image_without_text_goes_to_the_decoder(reader_pipeline, monkeypatch):
    pipe = reader_pipeline
    image = Image.new("RGB", (64, 64), "white")
    monkeypatch.setattr(pipe.model, "read_lines", lambda pixels, *_: [[] for _ in pixels])
    calls = []
    generate = pipe._generate
    monkeypatch.setattr(pipe, "_generate", lambda *a, **k: calls.append(a) or generate(*a, **k))
    result = pipe.ocr(image)
    assert len(calls) == 1 and 1 <= result.num_tokens <= 4  # generated, within max_new_tokens
    monkeypatch.setattr(pipe.model, "read_lines", lambda pixels, *_: [[[7, 8]] for _ in pixels])
    assert pipe.ocr(image).text == pipe.processor.tokenizer.decode([7, 8]) and len(calls) == 1


def test_growing_the_vocabulary_grows_the_reading_head_and_keeps_what_it_read(tokenizer):
    """A checkpoint's tokenizer extended with a run's new characters resizes the embeddings (train/init.py):
    the reading head must follow, keep its old rows, and never read a new token it has not been trained on."""
    torch.manual_seed(0)
    model = VaryForCausalLM(tiny_reader(len(tokenizer))).eval()
    grid = model.vision_vocab.grid(torch.randn(1, 3, 64, 64))
    before = model.reading_logits(grid)
    model.resize_token_embeddings(len(tokenizer) + 10)
    after = model.reading_logits(grid)
    vocab = model.config.text_config.vocab_size
    assert model.reading_head.out_features == 2 * vocab and vocab >= len(tokenizer) + 10
    assert torch.allclose(after[..., : len(tokenizer)], before, atol=1e-6)
    assert (after[..., len(tokenizer) :].max(-1).values < after[..., : len(tokenizer)].max(-1).values).all()


# --- photographs: the decoder scores the nature sentences -----------------------------------------------------
@pytest.fixture()
def photo_pipeline(tmp_path):
    tok = train_char_tokenizer((TEXTS + list(NATURE_SENTENCES)) * 3, vocab_size=128)
    torch.manual_seed(0)
    model = VaryForCausalLM(tiny_reader(len(tok), ocr_reader="reading_head", photo_nll_threshold=1e9)).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return Pipeline.from_pretrained(tmp_path, max_new_tokens=4)


def test_photo_answers_pick_the_sentence_the_decoders_own_loss_prefers(photo_pipeline):
    pipe, tok = photo_pipeline, photo_pipeline.processor.tokenizer
    images = [Image.new("RGB", (64, 64), "white"), Image.effect_noise((64, 64), 80).convert("RGB")]
    prompt = pipe.processor.prompt_ids(pipe.prompt_style.instruction("ocr", None, None, False, model=pipe.name))
    answers = pipe.photo_answers(images)  # threshold 1e9: every image is a photograph
    for image, answer in zip(images, answers, strict=True):
        losses = []  # the reference: one plain forward per sentence, the LM's own shifted loss over the answer
        for sentence in NATURE_SENTENCES:
            ids = torch.tensor([prompt + tok.encode(sentence, add_special_tokens=False) + [tok.eos_token_id]])
            labels = ids.clone()
            labels[:, : len(prompt)] = -100
            pixels = pipe.processor.image_tensor(image)[None]
            with torch.inference_mode():
                losses.append(float(pipe.model(input_ids=ids, pixel_values=pixels, labels=labels).loss))
        best = min(range(len(losses)), key=losses.__getitem__)
        assert answer == NATURE_SENTENCES[best]
        for margin, expected in ((1e-3, NATURE_SENTENCES[best]), (-1e-3, None)):  # the threshold is the boundary
            pipe.model.config.photo_nll_threshold = losses[best] + margin
            assert pipe.photo_answers([image]) == [expected]
        pipe.model.config.photo_nll_threshold = 1e9


def test_only_a_short_head_reading_is_asked_whether_it_is_a_photograph(photo_pipeline, monkeypatch):
    pipe = photo_pipeline
    image = Image.new("RGB", (64, 64), "white")
    letter = pipe.processor.tokenizer.convert_tokens_to_ids("a")
    for n, photo in ((2, True), (Pipeline.PHOTO_MAX_CHARS, False)):
        lines = [[letter] * n]  # one line of n letters
        monkeypatch.setattr(pipe.model, "read_lines", lambda pixels, *_, lines=lines: [lines])
        assert (pipe.ocr(image).text in NATURE_SENTENCES) is photo
    pipe.model.config.photo_nll_threshold = None  # no gate: the head's two stray letters stand
    monkeypatch.setattr(pipe.model, "read_lines", lambda pixels, *_: [[[letter] * 2]])
    assert pipe.ocr(image).text == "aa"
    with pytest.raises(ValueError, match="photo_nll_threshold is for ocr_reader='reading_head'"):
        tiny_reader(64, photo_nll_threshold=1.0)
