"""Pipeline: a loaded Vary model behind task-level calls - OCR, markdown, chart -> dict, questions.

    from vary.infer.pipeline import Pipeline
    pipe = Pipeline.from_pretrained("path/to/model")         # ours or an official checkpoint folder
    text = pipe.ocr("page.png")                              # a str (Result) with .truncated_by_loop_guard
    chart = pipe.chart(open("chart.png", "rb").read())       # {'title': ..., 'data': {...}}
    for chunk in pipe.stream("page.png", "markdown"): print(chunk, end="")

Images may be paths, bytes or PIL images. Decoding is greedy by default, stops at the conversation
template's stop string and at degenerate repetition loops (see generation.LoopGuard). A Vary-tiny model
(plain template) reads no instruction: every task gives it the same prompt.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from transformers import StoppingCriteriaList, TextIteratorStreamer

from vary.assets import bundled_model_dir
from vary.infer.documents import Page
from vary.infer.generation import (
    CancelCriteria,
    GenerationSettings,
    LoopGuard,
    clean_text,
    generated_ids,
)
from vary.modeling.loading import load
from vary.modeling.processor import ImageInput, VaryProcessor
from vary.modeling.quantize import cpu_has_native_bf16, is_quantized
from vary.modeling.vary import VaryForCausalLM
from vary.prompts import TASK_PROMPTS, ask_prompt
from vary.templates import get_template

TASKS = ("ocr", "markdown", "chart", "ask")  # plain text, markdown, chart -> dict, short answer to a question
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}  # fmt: skip


class Result(str):
    """A generated answer: the text itself (a str), plus how generation ended."""

    task: str
    truncated_by_loop_guard: bool
    num_tokens: int

    def __new__(cls, text: str, task: str = "", truncated_by_loop_guard: bool = False, num_tokens: int = 0):
        result = super().__new__(cls, text)
        result.task, result.truncated_by_loop_guard, result.num_tokens = task, truncated_by_loop_guard, num_tokens
        return result

    @property
    def text(self) -> str:
        return str(self)

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "truncated_by_loop_guard": self.truncated_by_loop_guard,
            "num_tokens": self.num_tokens,
        }


class ChartParseError(ValueError):
    """The model's chart answer is not a python-dict literal; `.text` keeps the raw answer."""

    def __init__(self, message: str, text: str):
        super().__init__(message)
        self.text = text


def parse_chart(text: str) -> dict:
    """A chart answer -> dict, with ast.literal_eval (never eval: model output is untrusted)."""
    from vary.data.sources.charts import parse_chart_answer  # lazy: the data engine pulls in matplotlib

    try:
        return parse_chart_answer(text)
    except ValueError as err:
        raise ChartParseError(str(err), text) from None


def page_record(page: Page, result: Result, task: str) -> dict:
    """One page's output as JSON-ready data; chart answers are parsed when they can be (else `error` says why)."""
    record = {"source": page.document.name, "page": page.number, "task": task, **result.to_dict()}
    if task == "chart":
        try:
            record["chart"], record["error"] = parse_chart(result), None
            json.dumps(record["chart"])  # tuple keys are valid python but not JSON
        except (ChartParseError, TypeError) as err:
            record["chart"], record["error"] = None, str(err)
    return record


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """None: float32 on CPU, bfloat16 or float16 on a GPU. "auto": the same, except bfloat16 on a CPU that
    runs it natively (AVX512_BF16/AMX: ~2x less memory traffic per token); elsewhere bf16 is emulated and
    15-30x slower, so float32. None stays float32 on every CPU: bf16 changes some greedy tokens (docs/cpu-speed.md).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if torch.device(device).type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if dtype == "auto" and torch.device(device).type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)} or auto")
    return DTYPES[dtype]


class Pipeline:
    def __init__(
        self,
        model: VaryForCausalLM,
        processor: VaryProcessor,
        settings: GenerationSettings | None = None,
        name: str = "vary",
    ):
        self.model = model.eval()
        self.processor = processor
        self.settings = settings or GenerationSettings()
        self.name = name
        self.template = get_template(model.config.template)
        self._lock = threading.Lock()  # one generate() at a time: the model is shared by threads (server)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        quantize: str | None = None,
        **settings,
    ) -> Pipeline:
        """Load a local model folder (ours or official; None: the bundled model); `settings` are GenerationSettings.

        `quantize="int8"` (CPU only): int8 decoder weights, faster decoding (docs/cpu-speed.md); `dtype` then
        sets the vision branches' dtype ("auto": bfloat16 where the CPU runs it natively).
        """
        if path is None:
            path = bundled_model_dir()
            if path is None:
                raise FileNotFoundError(
                    "no model folder given and this install has no bundled model (vary/assets/model)"
                )
        if quantize is not None:
            if torch.device(device).type != "cpu":
                raise ValueError(f"--quantize {quantize} is for CPU inference; on {device} use --dtype instead")
            if resolve_dtype(dtype, device) not in (torch.float32, torch.bfloat16):
                raise ValueError(f"--quantize {quantize} runs the vision branches in float32 or bfloat16, not {dtype}")
        model, processor = load(path, dtype=resolve_dtype(dtype, device), quantize=quantize)
        # The fast CPU path gives the plain path's outputs (tests/test_fast_path.py) in less time and memory;
        # it only acts on CPU tensors in eval mode, so GPUs keep transformers' kernels.
        model.enable_fast_cpu_path(device == "cpu")
        return cls(model.to(device), processor, GenerationSettings(**settings), name=Path(path).name)

    # --- properties -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    def info(self) -> dict:
        return {"model": self.name, "template": self.template.name, "image_size": self.image_size,
                "device": str(self.device), "dtype": str(self.model.dtype).removeprefix("torch."),
                "quantized": "int8" if is_quantized(self.model) else None}  # fmt: skip

    # --- prompts ----------------------------------------------------------------------------------------
    def instruction(self, task: str, question: str | None = None) -> str:
        """The text instruction for a task (templated models); the plain template drops it anyway."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        if task == "ask":
            if not question or not question.strip():
                raise ValueError("task 'ask' needs a question")
            if not self.template.uses_instruction:
                warnings.warn(
                    f"{self.name} uses the plain (Vary-tiny) template, which reads no instruction: the question "
                    "is ignored and the model transcribes the image",
                    stacklevel=3,
                )
            return ask_prompt(question)
        if question:
            raise ValueError(f"a question is only used with task 'ask', not {task!r}")
        return TASK_PROMPTS[task]

    # --- generation -------------------------------------------------------------------------------------
    def generate(
        self,
        images: list[ImageInput],
        instructions: list[str] | str,
        task: str = "",
        streamer: TextIteratorStreamer | None = None,
        cancel: threading.Event | None = None,
        **overrides,
    ) -> list[Result]:
        """One batch: images + raw instructions -> one Result each. `overrides` replace GenerationSettings."""
        batch = self.processor(images, instructions)  # raises ImageError before any model work
        return self._generate(batch, task, streamer, cancel, dataclasses.replace(self.settings, **overrides))

    def _generate(self, batch, task, streamer, cancel, settings: GenerationSettings) -> list[Result]:
        tok = self.processor.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        end_ids = self._end_token_ids()
        prompt_length = batch["input_ids"].shape[1]
        guard = LoopGuard(prompt_length, pad_id, settings.loop_guard)
        criteria = [guard] + ([CancelCriteria(cancel)] if cancel is not None else [])
        kwargs = dict(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample, pad_token_id=pad_id,
                      eos_token_id=sorted(end_ids), stopping_criteria=StoppingCriteriaList(criteria))  # fmt: skip
        if settings.do_sample:
            kwargs |= dict(temperature=settings.temperature, top_p=settings.top_p)
        if self.template.stop and not self._single_token(self.template.stop):
            kwargs |= dict(stop_strings=[self.template.stop], tokenizer=tok)  # plain-text stop: HF matches it
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with self._lock, torch.inference_mode():
            sequences = self.model.generate(**batch, streamer=streamer, **kwargs)
        results = []
        for row in range(sequences.shape[0]):
            ids, looped = generated_ids(sequences, prompt_length, row, guard, end_ids)
            text = clean_text(tok.decode(ids, skip_special_tokens=True), self.template.stop)
            results.append(Result(text, task, looped, len(ids)))
        return results

    def _single_token(self, text: str) -> bool:
        return len(self.processor.tokenizer.encode(text, add_special_tokens=False)) == 1

    def _end_token_ids(self) -> set[int]:
        """EOS ids of the tokenizer and the model, plus the template's stop string when it is one token."""
        tok = self.processor.tokenizer
        ids = {tok.eos_token_id}
        eos = self.model.generation_config.eos_token_id
        ids |= set(eos) if isinstance(eos, list) else {eos}
        if self.template.stop and self._single_token(self.template.stop):
            ids.add(tok.encode(self.template.stop, add_special_tokens=False)[0])
        return {i for i in ids if i is not None}

    # --- task-level API ---------------------------------------------------------------------------------
    def run_batch(
        self,
        images: Iterable[ImageInput],
        task: str = "ocr",
        question: str | None = None,
        batch_size: int = 4,
        **overrides,
    ) -> list[Result]:
        """Several images, the same task; generated `batch_size` at a time (left-padded prompts)."""
        instruction = self.instruction(task, question)
        images = list(images)
        results: list[Result] = []
        for start in range(0, len(images), batch_size):
            results += self.generate(images[start : start + batch_size], instruction, task, **overrides)
        return results

    def run(self, image: ImageInput, task: str = "ocr", question: str | None = None, **overrides) -> Result:
        return self.run_batch([image], task, question, **overrides)[0]

    def ocr(self, image: ImageInput, **overrides) -> Result:
        return self.run(image, "ocr", **overrides)

    def markdown(self, image: ImageInput, **overrides) -> Result:
        return self.run(image, "markdown", **overrides)

    def ask(self, image: ImageInput, question: str, **overrides) -> Result:
        return self.run(image, "ask", question, **overrides)

    def chart(self, image: ImageInput, **overrides) -> dict:
        """The chart's content as {'title': ..., 'data': {...}}; ChartParseError if the answer is no dict."""
        return parse_chart(self.run(image, "chart", **overrides))

    def run_pages(
        self, pages: Iterable[Page], task: str = "ocr", question: str | None = None, batch_size: int = 4, **overrides
    ) -> Iterator[tuple[Page, Result]]:
        """Document pages (see documents.py) in batches, rendered lazily; yields (page, result) in order."""
        instruction = self.instruction(task, question)
        pages = list(pages)
        for start in range(0, len(pages), batch_size):
            chunk = pages[start : start + batch_size]
            results = self.generate([page.image() for page in chunk], instruction, task, **overrides)
            yield from zip(chunk, results, strict=True)

    def stream(self, image: ImageInput, task: str = "ocr", question: str | None = None, **overrides) -> TextStream:
        """Text chunks as they are generated; the final Result is `.result` once the stream is exhausted."""
        batch = self.processor([image], self.instruction(task, question))  # bad images fail here, not in the thread
        return TextStream(self, batch, task, dataclasses.replace(self.settings, **overrides))


class TextStream:
    """Iterate for text chunks; generation runs in a thread (transformers' TextIteratorStreamer).

    `cancel()` stops generation early (e.g. the HTTP client went away). Errors in the generation
    thread are re-raised by the iterator, after the text produced so far.
    """

    def __init__(self, pipeline: Pipeline, batch: dict, task: str, settings: GenerationSettings):
        self.result: Result | None = None
        self._error: BaseException | None = None
        self._cancel = threading.Event()
        self._streamer = TextIteratorStreamer(pipeline.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        args = (batch, task, self._streamer, self._cancel, settings)
        self._thread = threading.Thread(target=self._work, args=(pipeline, args), daemon=True, name="vary-stream")
        self._thread.start()

    def _work(self, pipeline: Pipeline, args: tuple) -> None:
        try:
            self.result = pipeline._generate(*args)[0]
        except BaseException as err:  # handed to the consumer thread
            self._error = err
            self._streamer.end()  # unblock the iterator

    def __iter__(self) -> Iterator[str]:
        for chunk in self._streamer:
            if chunk:
                yield chunk
        self._thread.join()
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        self._cancel.set()
