"""Cross-request batching (serve/batching.py) on tiny random-weight models: batched = alone, rows come back early.

The templated model reads the instruction, so prompts of different lengths are left-padded together;
every comparison is exact (greedy decoding).
"""

from __future__ import annotations

import copy
import threading
import time

import pytest

from conftest import make_tiny_model_dir
from test_infer_pipeline import noise_image
from vary.infer.generation import GenerationSettings, LoopGuardConfig
from vary.infer.pipeline import Pipeline
from vary.serve.batching import BatchedPipeline, Batcher

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = ["Read.", "What is the title of this page?", "Convert the image to markdown format please, all of it.", "x"]


class CountingPipeline(Pipeline):
    """Records the batch size of every generate call the batcher makes."""

    def __init__(self, base: Pipeline):
        super().__init__(base.model, base.processor, base.settings, base.name)
        self.batch_sizes: list[int] = []
        self.sampled: list[bool] = []

    def _generate(self, batch, task, streamer, cancel, settings, watcher=None):
        self.batch_sizes.append(batch["input_ids"].shape[0])
        self.sampled.append(settings.do_sample)
        return super()._generate(batch, task, streamer, cancel, settings, watcher)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> CountingPipeline:
    folder = make_tiny_model_dir(tmp_path_factory.mktemp("tiny_vicuna"), seed=3, template="vicuna_v1")
    return CountingPipeline(Pipeline.from_pretrained(folder, max_new_tokens=30))


def settings(max_new_tokens: int, **kwargs) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=max_new_tokens, loop_guard=LoopGuardConfig(enabled=False), **kwargs)


def test_batched_outputs_equal_running_alone(pipe):
    sizes, budgets = ((300, 200), (64, 64), (500, 900), (80, 400)), (30, 7, 22, 15)
    cases = [(noise_image(i, size), q, n) for i, (size, q, n) in enumerate(zip(sizes, QUESTIONS, budgets, strict=True))]
    alone = [pipe.generate([im], q, "ask", **vars(settings(n)))[0] for im, q, n in cases]
    assert len({pipe.processor([im], q)["input_ids"].shape[1] for im, q, _ in cases}) == 4  # 4 prompt lengths
    pipe.batch_sizes.clear()
    batcher = Batcher(pipe, max_batch=4, window_ms=5000)  # the batch forms when all four are queued
    jobs = [batcher.submit(im, q, "ask", settings(n)) for im, q, n in cases]
    batched = [job.future.result(timeout=60) for job in jobs]
    assert pipe.batch_sizes == [4]
    assert [str(r) for r in batched] == [str(r) for r in alone]
    assert [r.num_tokens for r in batched] == [r.num_tokens for r in alone] and batched[1].num_tokens <= 7
    assert all(r.task == "ask" for r in batched)


def test_loop_guard_and_stop_per_row_match_running_alone(pipe):
    guarded = GenerationSettings(max_new_tokens=150)  # loop guard on: random weights loop, each row at its own step
    cases = [(noise_image(seed), q) for seed, q in zip((0, 5, 6), QUESTIONS, strict=False)]
    alone = [pipe.generate([im], q, **vars(guarded))[0] for im, q in cases]
    batcher = Batcher(pipe, max_batch=3, window_ms=5000)
    jobs = [batcher.submit(im, q, "", guarded) for im, q in cases]
    batched = [job.future.result(timeout=60) for job in jobs]
    assert [(str(r), r.truncated_by_loop_guard, r.num_tokens) for r in batched] == [
        (str(r), r.truncated_by_loop_guard, r.num_tokens) for r in alone
    ]


def test_a_finished_row_is_returned_while_the_batch_runs(pipe):
    batcher = Batcher(pipe, max_batch=2, window_ms=5000)
    seen: list[bool] = []
    short_job: list = []
    long_job = batcher.submit(noise_image(1), "Read.", "", settings(40), on_text=lambda text: seen.append(
        bool(short_job) and short_job[0].future.done()))  # fmt: skip
    short_job.append(batcher.submit(noise_image(2), "Read.", "", settings(3)))
    assert long_job.future.result(timeout=60).num_tokens == 40
    assert short_job[0].future.result().num_tokens == 3
    assert seen[2:] and all(seen[3:])  # from the step after its third token on, the short answer was out


def test_cancel_frees_a_row_and_leaves_the_others_alone(pipe):
    batcher = Batcher(pipe, max_batch=2, window_ms=5000)
    cancel = threading.Event()

    def stop_after_five(text: str) -> None:
        stop_after_five.calls += 1
        if stop_after_five.calls == 5:
            cancel.set()

    stop_after_five.calls = 0
    cancelled = batcher.submit(noise_image(1), "Read.", "", settings(40), cancel, on_text=stop_after_five)
    other = batcher.submit(noise_image(2), "Read.", "", settings(40))
    assert cancelled.future.result(timeout=60).num_tokens <= 6
    assert str(other.future.result(timeout=60)) == str(
        pipe.generate([noise_image(2)], "Read.", **vars(settings(40)))[0]
    )


def test_cancelled_while_waiting_never_runs(pipe):
    pipe.batch_sizes.clear()
    batcher = Batcher(pipe, max_batch=2, window_ms=300)
    cancel = threading.Event()
    cancel.set()
    dropped = batcher.submit(noise_image(1), "Read.", "", settings(20), cancel)
    kept = batcher.submit(noise_image(2), "Read.", "", settings(20))
    assert dropped.future.result(timeout=60).num_tokens == 0 and kept.future.result(timeout=60).num_tokens > 0
    assert pipe.batch_sizes == [1]


def test_only_alike_settings_share_a_batch(pipe):
    pipe.batch_sizes.clear()
    pipe.sampled.clear()
    batcher = Batcher(pipe, max_batch=2, window_ms=1000)
    first = batcher.submit(noise_image(1), "Read.", "", settings(5))
    sampled = batcher.submit(noise_image(2), "Read.", "", settings(5, do_sample=True, temperature=0.7))
    second = batcher.submit(noise_image(3), "Read.", "", settings(5))  # joins the first, not the sampled one
    for job in (first, sampled, second):
        job.future.result(timeout=60)
    assert list(zip(pipe.batch_sizes, pipe.sampled, strict=True)) == [(2, False), (1, True)]


def test_batched_pipeline_generate_and_stream(pipe):
    batched = BatchedPipeline(pipe, max_batch=4, window_ms=50)
    images = [noise_image(seed) for seed in (1, 2, 3)]
    assert batched.run_batch(images, "ocr", max_new_tokens=12) == pipe.run_batch(images, "ocr", max_new_tokens=12)
    stream = batched.stream(images[0], "ask", "What is the title?", max_new_tokens=25)
    chunks = list(stream)
    assert len(chunks) > 1 and "".join(chunks) == stream.result  # the chunks add up to the answer
    assert stream.result == pipe.ask(images[0], "What is the title?", max_new_tokens=25)
    with pytest.raises(ValueError, match="empty file"):
        batched.generate([images[0], b""], "Read.")


def test_generation_errors_reach_every_caller(pipe):
    class Broken(Pipeline):
        def _generate(self, *args, **kwargs):
            raise RuntimeError("out of memory")

    batcher = Batcher(Broken(pipe.model, pipe.processor, pipe.settings), max_batch=2, window_ms=200)
    jobs = [batcher.submit(noise_image(i), "Read.", "", settings(5)) for i in range(2)]
    for job in jobs:
        with pytest.raises(RuntimeError, match="out of memory"):
            job.future.result(timeout=60)


def test_a_batch_waits_for_jobs_being_preprocessed(pipe):
    """Two requests at once, one with a slow image: they share a batch although the window is 0."""
    pipe.batch_sizes.clear()
    batcher = Batcher(pipe, max_batch=2, window_ms=0)
    slow_image, preparing = noise_image(2), threading.Event()
    processor = pipe.processor

    class SlowProcessor:
        def __getattr__(self, name):
            return getattr(processor, name)

        def __call__(self, images, instructions, **options):
            if images[0] is slow_image:
                preparing.set()
                time.sleep(0.1)
            return processor(images, instructions, **options)

    batcher.pipeline = copy.copy(pipe)
    batcher.pipeline.processor = SlowProcessor()
    slow: list = []
    thread = threading.Thread(target=lambda: slow.append(batcher.submit(slow_image, "Read.", "", settings(5))))
    thread.start()
    assert preparing.wait(10)
    fast = batcher.submit(noise_image(1), "Read.", "", settings(5))
    thread.join()
    assert fast.future.result(timeout=60).num_tokens and slow[0].future.result(timeout=60).num_tokens
    assert pipe.batch_sizes == [2]
