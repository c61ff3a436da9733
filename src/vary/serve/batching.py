"""Cross-request batching: concurrent requests share one `generate` call.

The server's endpoints call a `BatchedPipeline` (a Pipeline whose generate/stream go through a `Batcher`).
Each call is preprocessed in its own thread (bad images fail there, alone) and queued as a `Job`; one
worker thread takes the jobs that arrived within `window_ms` of the first waiting one (up to `max_batch`,
with the same decoding settings), left-pads their prompts into one batch and runs the model once.

Rows are independent: a `RowWatcher` sees every decoding step and stops each row at its own token
budget or when its client cancelled, and hands a finished row's Result back at once, while the rest
of the batch keeps generating (transformers pads finished rows). Greedy outputs equal running each
request alone (tests/test_serve_batching.py). A batch does not take new rows while it runs: jobs that
arrive meanwhile wait for the next one (continuous batching would need our own decoding loop).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import torch
from transformers import StoppingCriteria
from transformers.generation.stopping_criteria import StopStringCriteria

from vary.infer.generation import GenerationSettings, LoopGuard, generated_ids
from vary.infer.pipeline import Pipeline, Result
from vary.modeling.processor import ImageInput, left_pad


@dataclasses.dataclass(eq=False)
class Job:
    """One image + instruction waiting for (or in) a batch; `future` gets its Result."""

    inputs: dict[str, torch.Tensor]  # the processor's output for this one sample (batch dimension 1)
    task: str
    settings: GenerationSettings
    cancel: threading.Event
    on_text: Callable[[str], None] | None = None  # streaming: called with the text so far, every step
    future: Future = dataclasses.field(default_factory=Future)
    submitted: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def prompt_ids(self) -> list[int]:
        return self.inputs["input_ids"][0].tolist()

    @property
    def prompt_tokens(self) -> int:
        return self.inputs["input_ids"].shape[1]

    def batch_key(self) -> GenerationSettings:
        """Jobs batch together when they decode alike; only the token budget may differ (per row)."""
        return dataclasses.replace(self.settings, max_new_tokens=0)

    def deliver(self, result: Result) -> None:
        if not self.future.done():
            self.future.set_result(result)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class RowWatcher(StoppingCriteria):
    """Per-row stops (own budget, cancel) and early hand-back of finished rows, called at every step.

    A row is done when its newest token ends the answer, it reached its budget, its client cancelled,
    the loop guard stopped it or (multi-token stop strings) the stop string appeared.
    """

    def __init__(self, pipeline: Pipeline, jobs: list[Job], metrics=None):
        self.pipeline, self.jobs, self.metrics = pipeline, jobs, metrics
        self.end_ids = torch.tensor(sorted(pipeline._end_token_ids()))
        self.budgets = torch.tensor([job.settings.max_new_tokens for job in jobs])
        self.delivered = torch.zeros(len(jobs), dtype=torch.bool)
        stop = pipeline.template.stop
        tok = pipeline.processor.tokenizer
        self.stop_strings = StopStringCriteria(tok, [stop]) if stop and not pipeline._single_token(stop) else None
        self.guard: LoopGuard | None = None
        self.prompt_length = 0

    def attach(self, guard: LoopGuard, prompt_length: int) -> RowWatcher:
        """Pipeline._generate's `watcher` hook: the batch's loop guard and (padded) prompt length."""
        self.guard, self.prompt_length = guard, prompt_length
        return self

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_length
        done = torch.isin(input_ids[:, -1].cpu(), self.end_ids) | (generated >= self.budgets)
        done |= torch.tensor([job.cancel.is_set() for job in self.jobs])
        if self.stop_strings is not None:
            done |= self.stop_strings(input_ids, scores).cpu()
        for row in self.guard.cuts:
            done[row] = True
        for row, job in enumerate(self.jobs):
            if self.delivered[row]:
                continue
            if done[row]:
                self.deliver(row, self.pipeline.decode_row(input_ids, self.prompt_length, row, self.guard, job.task))
            elif job.on_text is not None:
                ids, _ = generated_ids(input_ids, self.prompt_length, row, None, set())
                job.on_text(self.pipeline.processor.tokenizer.decode(ids, skip_special_tokens=True))
        return self.delivered.to(input_ids.device)

    def deliver(self, row: int, result: Result) -> None:
        self.delivered[row] = True
        if self.metrics is not None:  # counted before the caller can see it
            self.metrics.generated_tokens.inc(result.num_tokens)
        self.jobs[row].deliver(result)


PREPARING_WAIT_S = 0.25  # longest wait for a job being preprocessed (a page decodes in tens of ms; a batch takes s)


class Batcher:
    """Queues jobs and runs them in batches on one worker thread (started on the first job)."""

    def __init__(self, pipeline: Pipeline, max_batch: int = 4, window_ms: float = 5.0, metrics=None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        self.pipeline, self.max_batch, self.window = pipeline, max_batch, window_ms / 1000
        self.metrics = metrics  # serve.metrics.ServerMetrics or None
        self._pending: deque[Job] = deque()
        self._preparing = 0  # jobs whose images are being preprocessed: they will be queued in a moment
        self._free_since = time.monotonic()  # when the last batch ended
        self._wake = threading.Condition()
        self._worker: threading.Thread | None = None

    @property
    def depth(self) -> int:
        """Jobs waiting for a batch (not counting the running one)."""
        return len(self._pending)

    def submit(
        self,
        image: ImageInput,
        instruction: str,
        task: str,
        settings: GenerationSettings,
        cancel: threading.Event | None = None,
        on_text: Callable[[str], None] | None = None,
        crop: bool | None = None,
        max_tiles: int | None = None,
    ) -> Job:
        """Queue one image + instruction; with `crop` its tiles travel as one row (their pixels side by side)."""
        with self._wake:
            self._preparing += 1
        try:
            # in the caller's thread: an ImageError fails this job alone
            inputs = self.pipeline._batch([image], instruction, crop, max_tiles)
        finally:
            with self._wake:
                self._preparing -= 1
                self._wake.notify()
        job = Job(inputs, task, settings, cancel or threading.Event(), on_text)
        with self._wake:
            self._pending.append(job)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, daemon=True, name="vary-batcher")
                self._worker.start()
            self._wake.notify()
        return job

    def _work(self) -> None:
        while True:
            jobs = self._next_batch()
            if jobs:
                self._run(jobs)
            self._free_since = time.monotonic()

    def _next_batch(self) -> list[Job]:
        """The oldest job and the jobs that decode alike, once `max_batch` are there or the wait is over.

        A batch that is not full waits `window` for more jobs (from when the oldest arrived or the last batch
        ended), and up to PREPARING_WAIT_S for jobs whose images are being preprocessed: a burst of requests
        then shares one batch instead of the first one or two running alone while the others wait a whole batch.
        """
        with self._wake:
            while not self._pending:
                self._wake.wait()
            first = self._pending[0]
            while True:
                alike = [job for job in self._pending if job.batch_key() == first.batch_key()][: self.max_batch]
                ready = max(first.submitted, self._free_since)
                wait = max(self.window, PREPARING_WAIT_S if self._preparing else 0.0)
                left = ready + wait - time.monotonic()
                if len(alike) >= self.max_batch or left <= 0:
                    break
                self._wake.wait(left)
            for job in alike:
                self._pending.remove(job)
        return [job for job in alike if not self._dropped(job)]

    @staticmethod
    def _dropped(job: Job) -> bool:
        """A job cancelled while it waited never enters a batch; its caller gets an empty result."""
        if job.cancel.is_set():
            job.deliver(Result("", job.task, False, 0))
        return job.cancel.is_set()

    def _run(self, jobs: list[Job]) -> None:
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(jobs))
        try:
            watcher = RowWatcher(self.pipeline, jobs, self.metrics)
            tok = self.pipeline.processor.tokenizer
            batch = left_pad([job.prompt_ids for job in jobs], tok.pad_token_id or 0)  # as the processor pads
            for key in jobs[0].inputs.keys() - batch.keys():  # pixel_values (and pixel_values_clip)
                batch[key] = torch.cat([job.inputs[key] for job in jobs])
            budget = max(job.settings.max_new_tokens for job in jobs)
            settings = dataclasses.replace(jobs[0].settings, max_new_tokens=budget)
            results = self.pipeline._generate(batch, "", None, None, settings, watcher.attach)
        except BaseException as err:  # every waiting caller gets the error; the worker lives on
            for job in jobs:
                job.fail(err)
            return
        for row, (job, result) in enumerate(zip(jobs, results, strict=True)):
            if not watcher.delivered[row]:  # not seen done by the watcher (generate stopped on its own)
                watcher.deliver(row, Result(result.text, job.task, result.truncated_by_loop_guard, result.num_tokens))


class BatchedStream:
    """A streaming job: iterate for text chunks, then `.result`; `cancel()` frees its row.

    The chunks add up to the final text (a stop string, a partial character and trailing spaces are held
    back until it is clear they stay), except when the loop guard cuts a repeated tail afterwards.
    """

    def __init__(
        self, batcher: Batcher, image: ImageInput, instruction: str, task: str, settings, crop=None, max_tiles=None
    ):
        self.result: Result | None = None
        self._chunks: queue.Queue[str | None] = queue.Queue()
        self._sent = ""
        self._stop = batcher.pipeline.template.stop
        self.job = batcher.submit(
            image, instruction, task, settings, on_text=self._update, crop=crop, max_tiles=max_tiles
        )
        self.job.future.add_done_callback(self._finish)

    def _update(self, text: str) -> None:
        text = text.lstrip()
        if self._stop and self._stop in text:
            text = text[: text.index(self._stop)]
        for n in range(min(len(self._stop), len(text)), 0, -1):  # the start of a stop string, maybe
            if self._stop.startswith(text[-n:]):
                text = text[:-n]
                break
        self._send(text.rstrip().rstrip("\ufffd"))

    def _send(self, text: str) -> None:
        if len(text) > len(self._sent) and text.startswith(self._sent):
            self._chunks.put(text[len(self._sent) :])
            self._sent = text

    def _finish(self, future: Future) -> None:
        if future.exception() is None:
            self._send(future.result().text)
        self._chunks.put(None)

    def __iter__(self) -> Iterator[str]:
        while (chunk := self._chunks.get()) is not None:
            yield chunk
        self.result = self.job.future.result()  # re-raises a generation error

    def cancel(self) -> None:
        self.job.cancel.set()


class BatchedPipeline(Pipeline):
    """The shared pipeline as the server uses it: generate() and stream() go through one Batcher.

    It shares the wrapped pipeline's model, processor, settings and lock; the batches run through the
    wrapped pipeline's `_generate`.
    """

    def __init__(self, pipeline: Pipeline, max_batch: int = 4, window_ms: float = 5.0, metrics=None):
        super().__init__(
            pipeline.model, pipeline.processor, pipeline.settings, pipeline.name, pipeline.crop, pipeline.max_tiles
        )
        self._lock = pipeline._lock
        self.batcher = Batcher(pipeline, max_batch, window_ms, metrics)

    def generate(
        self, images, instructions, task="", streamer=None, cancel=None, crop=None, max_tiles=None, **overrides
    ) -> list[Result]:
        # a transformers streamer follows a single sequence, and the reading head decodes nothing: run alone
        if streamer is not None or self.reads_with_head(task):
            return super().generate(images, instructions, task, streamer, cancel, crop, max_tiles, **overrides)
        if isinstance(instructions, str):
            instructions = [instructions] * len(images)
        if len(instructions) != len(images):
            raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
        settings = dataclasses.replace(self.settings, **overrides)
        cancel = cancel or threading.Event()
        jobs = []
        try:
            for image, instruction in zip(images, instructions, strict=True):
                jobs.append(
                    self.batcher.submit(image, instruction, task, settings, cancel, crop=crop, max_tiles=max_tiles)
                )
        except BaseException:
            cancel.set()  # a bad image: the ones already queued are dropped
            raise
        return [job.future.result() for job in jobs]

    def stream(
        self, image, task="ocr", question=None, box=None, color=None, crop=None, max_tiles=None, **overrides
    ) -> BatchedStream:
        settings = dataclasses.replace(self.settings, **overrides)
        images, instructions = self.instructions([image], task, question, box, color, crop)
        return BatchedStream(self.batcher, images[0], instructions[0], task, settings, crop, max_tiles)
