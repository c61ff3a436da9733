"""Pipeline and generation on the tiny random-weight model: tasks, batching, streaming, stops, loop guard.

The outputs are meaningless (random weights), but greedy decoding is deterministic, so the plumbing can
be checked exactly: batches against single calls, streams against plain runs, guarded against unguarded.
"""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from vary.infer.generation import LoopGuard, LoopGuardConfig, clean_text, generated_ids
from vary.infer.pipeline import ChartParseError, Pipeline, Result, parse_chart, resolve_dtype

PAD, EOS = 0, 1
GUARD = LoopGuardConfig(max_period=16, min_repeats=4, min_tokens=12)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir) -> Pipeline:
    return Pipeline.from_pretrained(tiny_model_dir, max_new_tokens=24)


def noise_image(seed: int, size=(300, 200)) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


# --- loop guard (synthetic ids) -----------------------------------------------------------------------------
def rows(*sequences: list[int]) -> torch.Tensor:
    return torch.tensor(sequences)


def test_loop_guard_stops_a_repeated_unit_and_cuts_it_to_one_copy():
    prompt = [5] * 10  # the prompt is periodic too (image pads): it must be ignored
    text = [7, 8, 9, 10, 11]
    looping = prompt + text + [20, 21, 22] * 4  # 4 copies of a 3-token line = 12 tokens
    guard = LoopGuard(prompt_length=10, pad_token_id=PAD, config=GUARD)
    assert guard(rows(looping[:-1]))[0].item() is False  # 11 periodic tokens: not yet
    assert guard(rows(looping))[0].item() is True
    ids, looped = generated_ids(rows(looping), 10, 0, guard, {EOS})
    assert looped and ids == text + [20, 21, 22]


def test_loop_guard_ignores_prompt_short_repeats_and_finished_rows():
    guard = LoopGuard(prompt_length=4, pad_token_id=PAD, config=GUARD)
    varied = [2] * 4 + list(range(10, 40))  # no repetition at all
    short = [2] * 4 + list(range(10, 30)) + [9] * 10  # 10 copies of one token < min_tokens (12)
    finished = [2] * 4 + list(range(10, 20)) + [EOS] + [PAD] * 19  # padded after EOS, not looping
    looping = [2] * 4 + list(range(10, 18)) + [6, 7] * 11
    stop = guard(rows(varied, short, finished, looping))
    assert stop.tolist() == [False, False, False, True]
    assert set(guard.cuts) == {3}
    ids, looped = generated_ids(rows(varied, short, finished, looping), 4, 2, guard, {EOS})
    assert ids == list(range(10, 20)) and not looped  # cut at its EOS, not marked


def test_loop_guard_finds_the_fundamental_period():
    guard = LoopGuard(prompt_length=0, pad_token_id=PAD, config=GUARD)
    line = [3, 4, 3, 5]  # period 4 (contains a shorter repeat "3 ? 3")
    assert guard(rows([9] + line * 4))[0].item() is True
    ids, looped = generated_ids(rows([9] + line * 4), 0, 0, guard, {EOS})
    assert looped and ids == [9] + line


def test_clean_text_cuts_at_a_plain_text_stop():
    assert clean_text("  answer text ### rest", "###") == "answer text"
    assert clean_text("\nno stop here\n", "</s>") == "no stop here"


# --- tasks on the tiny model ----------------------------------------------------------------------------------
def test_ocr_returns_a_result_string(pipe):
    result = pipe.ocr(noise_image(0))
    assert isinstance(result, Result) and isinstance(result, str)
    assert result.task == "ocr" and 0 < result.num_tokens <= 24
    assert result.to_dict()["text"] == str(result)


def test_inputs_as_path_bytes_and_pil_agree(pipe, tmp_path):
    image = noise_image(1)
    path = tmp_path / "page.png"
    image.save(path)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    assert pipe.ocr(path) == pipe.ocr(buffer.getvalue()) == pipe.ocr(image)


def test_batch_matches_single_runs(pipe):
    images = [noise_image(seed, size) for seed, size in ((2, (300, 200)), (3, (64, 64)), (4, (500, 900)))]
    batch = pipe.run_batch(images, "ocr", batch_size=2)
    assert len(batch) == 3
    assert [str(r) for r in batch] == [str(pipe.run(im)) for im in images]


def test_plain_template_reads_no_instruction(pipe):
    """A Vary-tiny model (plain template) sees the same prompt for every task."""
    image = noise_image(5)
    assert pipe.ocr(image) == pipe.markdown(image)
    with pytest.warns(UserWarning, match="question is ignored"):
        assert pipe.ask(image, "What is the total?") == pipe.ocr(image)


def test_max_new_tokens_and_loop_guard(pipe):
    image = noise_image(0)
    free = pipe.run(image, max_new_tokens=120, loop_guard=LoopGuardConfig(enabled=False))
    guarded = pipe.run(image, max_new_tokens=120)
    # This random model falls into a loop (as real OCR models sometimes do): the guard stops it early.
    assert free.num_tokens == 120 and not free.truncated_by_loop_guard
    assert guarded.truncated_by_loop_guard and guarded.num_tokens < 100
    assert free.startswith(guarded.rstrip("\ufffd"))  # greedy: the guarded text is a prefix
    assert pipe.run(image, max_new_tokens=5).num_tokens == 5


def test_stream_yields_chunks_and_a_final_result(pipe):
    image = noise_image(0)
    stream = pipe.stream(image, "ocr", max_new_tokens=40)
    chunks = list(stream)
    assert len(chunks) > 1  # incremental, not one blob
    assert stream.result == pipe.run(image, max_new_tokens=40)
    assert "".join(chunks).strip().startswith(stream.result.rstrip("\ufffd"))


def test_stream_reports_bad_images_before_starting(pipe):
    with pytest.raises(ValueError, match="empty file"):
        pipe.stream(b"", "ocr")


def test_stream_cancel_stops_generation(pipe):
    stream = pipe.stream(noise_image(0), "ocr", max_new_tokens=400, loop_guard=LoopGuardConfig(enabled=False))
    stream.cancel()
    list(stream)
    assert stream.result.num_tokens < 400


def test_task_and_question_validation(pipe):
    with pytest.raises(ValueError, match="unknown task 'poem'"):
        pipe.run(noise_image(0), "poem")
    with pytest.raises(ValueError, match="needs a question"):
        pipe.run(noise_image(0), "ask")
    with pytest.raises(ValueError, match="only used with task 'ask'"):
        pipe.run(noise_image(0), "ocr", question="why?")


# --- chart parsing --------------------------------------------------------------------------------------------
def test_chart_answers_parse_safely():
    answer = "The dict of the chart is: {'title': 'Sales', 'data': {'2021': 1.5, '2022': 2.25}}"
    assert parse_chart(answer) == {"title": "Sales", "data": {"2021": 1.5, "2022": 2.25}}
    hostile = "{'title': __import__('os').system('echo pwned'), 'data': {}}"
    with pytest.raises(ChartParseError) as err:
        parse_chart(hostile)
    assert err.value.text == hostile


def test_chart_on_random_weights_raises_with_the_raw_text(pipe):
    with pytest.raises(ChartParseError) as err:
        pipe.chart(noise_image(0))
    assert err.value.text == pipe.run(noise_image(0), "chart")


def test_cli_choices_are_the_pipeline_tasks():
    from vary.infer.pipeline import TASKS
    from vary.infer.tasks import Task

    assert tuple(Task) == TASKS


def test_resolve_dtype():
    assert resolve_dtype(None, "cpu") is torch.float32
    assert resolve_dtype("bf16", "cpu") is torch.bfloat16
    assert resolve_dtype(torch.float16, "cpu") is torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_dtype("int8", "cpu")


def test_from_pretrained_without_a_path_uses_the_bundled_model(tiny_model_dir, monkeypatch):
    import vary.infer.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "bundled_model_dir", lambda: None)
    with pytest.raises(FileNotFoundError, match="no bundled model"):
        pipeline_module.Pipeline.from_pretrained()
    monkeypatch.setattr(pipeline_module, "bundled_model_dir", lambda: tiny_model_dir)
    assert pipeline_module.Pipeline.from_pretrained().name == tiny_model_dir.name
