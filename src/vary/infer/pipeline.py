"""Pipeline: a loaded Vary model behind task-level calls - OCR, markdown, chart -> dict, questions.

    from vary.infer.pipeline import Pipeline
    pipe = Pipeline.from_pretrained("path/to/model")         # ours or an official checkpoint folder
    text = pipe.ocr("page.png")                              # a str (Result) with .truncated_by_loop_guard
    chart = pipe.chart(open("chart.png", "rb").read())       # {'title': ..., 'data': {...}}
    for chunk in pipe.stream("page.png", "markdown"): print(chunk, end="")

Images may be paths, bytes or PIL images. Decoding is greedy by default, stops at the conversation
template's stop string and at degenerate repetition loops (see generation.LoopGuard). A Vary-tiny model
(plain template) reads no instruction: every task gives it the same prompt.

The model's prompt style (config.prompt_style, vary.prompts.PROMPT_STYLES) picks each task's instruction.
GOT-OCR2 models also take GOT's fine-grained prompts and its multi-crop mode:

    pipe.ocr("page.png", box=(40, 60, 500, 300))   # only the text in this pixel box
    pipe.ocr("page.png", color="red")              # only the red text
    pipe.markdown("tall_page.png", crop=True)      # tiles + thumbnail in one image block (or Pipeline(crop=True))
"""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList, TextIteratorStreamer

from vary.assets import bundled_model_dir
from vary.chart_answer import parse_chart_answer
from vary.infer.chart_bars import find_bars
from vary.infer.chart_reading import read_chart
from vary.infer.documents import DocumentError, Page
from vary.infer.generation import (
    CancelCriteria,
    GenerationSettings,
    LoopGuard,
    NoRepeatNGram,
    clean_text,
    generated_ids,
)
from vary.infer.tasks import Task
from vary.modeling.char_bigrams import ChineseReranker
from vary.modeling.conv_vocab import COLUMN_STRIDE, ROW_STRIDE, letter_tokens, wide_tokens
from vary.modeling.hub import model_name
from vary.modeling.lexicon import LexiconReader
from vary.modeling.loading import load
from vary.modeling.processor import DEFAULT_MAX_TILES, ImageInput, VaryProcessor, load_image, on_light_background
from vary.modeling.quantize import cpu_has_native_bf16, is_quantized
from vary.modeling.vary import VaryForCausalLM
from vary.prompts import NATURE_SENTENCES, PromptError, ask_prompt, box_to_grid, get_prompt_style
from vary.templates import get_template

TASKS = tuple(Task)  # plain text, markdown, chart -> dict, short answer to a question
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


def check_device(device: str) -> None:
    """A clear ValueError for a device this machine does not have (instead of a traceback from .to())."""
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device {device!r}: {err}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use --device cpu")


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
    # Reading-head models: fewer characters than this read from an image makes it a photograph candidate (stray
    # letters in a texture); our held-out photographs read at most 10, real one-line blocks at least 20.
    PHOTO_MAX_CHARS = 32

    def __init__(
        self,
        model: VaryForCausalLM,
        processor: VaryProcessor,
        settings: GenerationSettings | None = None,
        name: str = "vary",
        crop: bool = False,
        max_tiles: int = DEFAULT_MAX_TILES,
    ):
        self.model = model.eval()
        self.processor = processor
        self.settings = settings or GenerationSettings()
        self.name = name
        self.template = get_template(model.config.template)
        self.prompt_style = get_prompt_style(model.config.prompt_style)
        # Multi-crop mode by default for every call (each call may still choose); see VaryProcessor.crop_tensors.
        # (a reading-head model reads pages whole with crop on: its OCR needs no multi-crop prompt)
        if getattr(model.config, "ocr_reader", "decoder") != "reading_head":
            self.prompt_style.check(None, crop=crop, model=name)
        self.crop, self.max_tiles = crop, max_tiles
        self._lock = threading.Lock()  # one generate() at a time: the model is shared by threads (server)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        quantize: str | None = None,
        crop: bool = False,
        max_tiles: int = DEFAULT_MAX_TILES,
        **settings,
    ) -> Pipeline:
        """Load a model: a local folder (ours or official), a hub id `org/name[@revision]` or a known name
        (`vary models`); None: the bundled model. `settings` are GenerationSettings.

        `quantize="int8"` (CPU only): int8 decoder weights, faster decoding (docs/cpu-speed.md); `dtype` then
        sets the vision branches' dtype, by default "auto" (bfloat16 where the CPU runs it natively): int8 already
        trades exactness for speed, and there bf16 halves the vision time and activations (GOT-OCR2, a 1,024-token
        page: vision 2.4 s instead of 5.1, peak RSS 1.26 GB instead of 1.32).
        """
        if path is None:
            path = bundled_model_dir()
            if path is None:
                raise FileNotFoundError(
                    "no model folder given and this install has no bundled model (vary/assets/model)"
                )
        if quantize is not None:
            dtype = "auto" if dtype is None else dtype
            if torch.device(device).type != "cpu":
                raise ValueError(f"--quantize {quantize} is for CPU inference; on {device} use --dtype instead")
            if resolve_dtype(dtype, device) not in (torch.float32, torch.bfloat16):
                raise ValueError(f"--quantize {quantize} runs the vision branches in float32 or bfloat16, not {dtype}")
        check_device(device)  # after the option checks: a --quantize on cuda is refused as such, GPU or not
        model, processor = load(path, dtype=resolve_dtype(dtype, device), quantize=quantize)
        # The fast CPU path gives the plain path's outputs (tests/test_fast_path.py) in less time and memory;
        # it only acts on CPU tensors in eval mode, so GPUs keep transformers' kernels.
        model.enable_fast_cpu_path(device == "cpu")
        name = model_name(path) if Path(path).expanduser().is_dir() else str(path)  # a hub spec names itself
        return cls(model.to(device), processor, GenerationSettings(**settings), name, crop, max_tiles)

    # --- properties -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    def info(self) -> dict:
        return {"model": self.name, "template": self.template.name, "prompt_style": self.prompt_style.name,
                "image_size": self.image_size, "device": str(self.device),
                "dtype": str(self.model.dtype).removeprefix("torch."),
                "quantized": "int8" if is_quantized(self.model) else None}  # fmt: skip

    # --- prompts ----------------------------------------------------------------------------------------
    def instruction(
        self,
        task: str,
        question: str | None = None,
        box: list[int] | None = None,
        color: str | None = None,
        crop: bool | None = None,
    ) -> str:
        """The text instruction for a task (templated models); the plain template drops it anyway.

        `box` is on GOT's 0-1000 grid (see `instructions` for pixel boxes); box, color and crop are refused
        (PromptError, a ValueError) by models whose prompt style lacks them, as are tasks it lacks.
        """
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        crop = self.crop if crop is None else crop
        if self.reads_with_head(task):  # no prompt: the reading head reads any page size, crop or not
            if box is not None or color is not None:
                raise PromptError(f"{self.name} reads task ocr with its reading head, which takes no box or colour")
            return ""
        self.prompt_style.check(task, box is not None, color, crop, model=self.name)
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
        return self.prompt_style.instruction(task, box, color, crop, model=self.name)

    def check_prompt(
        self,
        task: str,
        question: str | None = None,
        box: tuple[float, ...] | None = None,
        color: str | None = None,
        crop: bool | None = None,
    ) -> None:
        """Raise (a one-line ValueError) for a task or option this model has no prompt for, before any image
        work; a pixel box itself is checked against each image later."""
        self.instruction(task, question, None if box is None else [0, 0, 0, 0], color, crop)

    def instructions(
        self,
        images: list[ImageInput],
        task: str,
        question: str | None = None,
        box: tuple[float, float, float, float] | None = None,
        color: str | None = None,
        crop: bool | None = None,
    ) -> tuple[list[ImageInput], list[str]]:
        """(images, one instruction each). A pixel `box` is put on GOT's 0-1000 grid with each image's own
        size, so the images are opened here (and returned opened, not read twice)."""
        if box is None:
            return images, [self.instruction(task, question, None, color, crop)] * len(images)
        self.check_prompt(task, question, box, color, crop)  # a refused option fails before any image is opened
        opened = [load_image(image, self.processor.max_pixels) for image in images]
        grids = [box_to_grid(box, image.width, image.height) for image in opened]
        return opened, [self.instruction(task, question, grid, color, crop) for grid in grids]

    def no_repeat_ngram_size(self, settings: GenerationSettings | None = None) -> int:
        """The n-gram ban in force: the settings', else the model's generation_config's, else its prompt style's."""
        size = (settings or self.settings).no_repeat_ngram_size
        if size is None:
            size = getattr(self.model.generation_config, "no_repeat_ngram_size", None) or (
                self.prompt_style.no_repeat_ngram_size
            )
        return int(size)

    # --- generation -------------------------------------------------------------------------------------
    def generate(
        self,
        images: list[ImageInput],
        instructions: list[str] | str,
        task: str = "",
        streamer: TextIteratorStreamer | None = None,
        cancel: threading.Event | None = None,
        crop: bool | None = None,
        max_tiles: int | None = None,
        **overrides,
    ) -> list[Result]:
        """One batch: images + raw instructions -> one Result each. `overrides` replace GenerationSettings."""
        if self.reads_with_head(task):
            return self.read(images, crop, max_tiles, task, **overrides)
        batch = self._batch(images, instructions, crop, max_tiles)  # raises ImageError before any model work
        return self._generate(batch, task, streamer, cancel, dataclasses.replace(self.settings, **overrides))

    def reads_with_head(self, task: str) -> bool:
        """Whether `task` is read by the model's reading head instead of the decoder (config.ocr_reader): plain
        OCR, and charts (their dict from where the head read each piece of text, vary.infer.chart_reading)."""
        return task in ("ocr", "chart") and getattr(self.model.config, "ocr_reader", "decoder") == "reading_head"

    def read_region(self, image: ImageInput, left: float, right: float, top: float, bottom: float,
                    scale: float) -> tuple[list[tuple], float, float]:  # fmt: skip
        """The reading head's rows of a part of `image` alone: `left`, `right` in frames and `top`, `bottom` in
        grid rows of the trained size (`right` may be inf: to the edge), read at `scale` times image_size wide.
        Returns the rows, the scale they were read at and the frame of the trained size where their frame 0 lies
        (the part's left edge less its white margin). chart_reading.read_chart reads a chart's labels and values
        again so (config.chart_reread_scale)."""
        size = self.processor.config.image_size
        frame = COLUMN_STRIDE / self.model.config.reading_frames  # px of the trained size
        left, right = max(0.0, left), min(right, size / frame)
        box = (left * frame / size, top * ROW_STRIDE / size, right * frame / size, bottom * ROW_STRIDE / size)
        pixels, scale = self.processor.region_tensor(image, box, scale)
        with self._lock, torch.inference_mode():
            rows = self.model.read_rows(pixels[None].to(self.device), self.wide_tokens, self.lexicon_reader)[0]
        return rows, scale, left - ROW_STRIDE / scale / frame  # the margin: ROW_STRIDE px at `scale`

    def read(self, images: list[ImageInput], crop: bool | None = None, max_tiles: int | None = None,
             task: str = "ocr", **overrides) -> list[Result]:  # fmt: skip
        """Plain-text OCR (or, with task "chart", a bar chart's dict: vary.infer.chart_reading) with the
        reading head: one forward pass of the conv vocabulary per image, each grid row read on its best path
        (VaryForCausalLM.read_rows). With `crop`, the page is resized to the multi-crop grid and read whole, so a
        line runs across its tiles; without it, the image is squashed to one tile. A chart is read at
        config.chart_read_scale times the tile's size (crop or not), then its labels, values and title each
        again on their own at config.chart_reread_scale (read_region), when that is set.

        A photograph is answered as Vary-tiny does, with a nature sentence. The head reads a few stray letters in
        some photographs' texture, so an image where it reads less than PHOTO_MAX_CHARS characters is asked of the
        decoder (`photo_answers`, config.photo_nll_threshold), and one where it reads nothing gets the decoder's
        own answer; `overrides` (GenerationSettings) apply to that generation."""
        crop = self.crop if crop is None else crop
        tok = self.processor.tokenizer
        decode = functools.partial(tok.decode, skip_special_tokens=True)
        scale = getattr(self.model.config, "chart_read_scale", 1.0) if task == "chart" else 1.0
        reread_scale = getattr(self.model.config, "chart_reread_scale", None)
        size = self.processor.config.image_size
        results = []
        for image in images:  # pages differ in size under crop: one at a time (a forward pass, no decoding loop)
            # decoded once (for a chart: the bars, the whole reading and each second one), light text on a dark
            # page inverted
            image = on_light_background(load_image(image, self.processor.max_pixels))
            if crop and task != "chart":
                pixels = self.processor.canvas_tensor(image, max_tiles or self.max_tiles)[0][None]
            else:
                pixels = self.processor.image_tensor(image, scale)[None]
            if task == "chart":  # read without splitting double letters: see conv_vocab.DOUBLE_LETTER_BLANK
                with self._lock, torch.inference_mode():
                    rows = self.model.read_rows(pixels.to(self.device), self.wide_tokens, self.lexicon_reader)[0]
                reread = {"read_region": functools.partial(self.read_region, image), "reread_scale": reread_scale}
                frames, grid_rows = size * self.model.config.reading_frames / COLUMN_STRIDE, size / ROW_STRIDE
                bars = [bar.scaled(frames, grid_rows) for bar in find_bars(image)]
                answer = read_chart(rows, decode, scale=pixels.shape[-1] / size, bars=bars,
                                    **(reread if reread_scale else {}))  # fmt: skip
                results.append(Result(answer, "chart", False, len(tok.encode(answer, add_special_tokens=False))))
                continue
            with self._lock, torch.inference_mode():
                lines = self.model.read_lines(
                    pixels.to(self.device), self.wide_tokens, self.letter_tokens, self.lexicon_reader
                )[0]
            text = "\n".join(decode(ids).strip() for ids in lines)
            results.append(Result(text, "ocr", False, sum(len(ids) for ids in lines)))
        if task == "chart":
            return results
        short = [i for i, result in enumerate(results) if len(result.strip()) < self.PHOTO_MAX_CHARS]
        for i, photo in zip(short, self.photo_answers([images[i] for i in short]), strict=True):
            if photo is not None:
                results[i] = Result(photo, "ocr", False, len(tok.encode(photo, add_special_tokens=False)))
        textless = [i for i, result in enumerate(results) if not result.text.strip()]
        if textless:
            instruction = self.prompt_style.instruction("ocr", None, None, False, model=self.name)
            batch = self._batch([images[i] for i in textless], instruction, False, None)
            answers = self._generate(batch, "ocr", None, None, dataclasses.replace(self.settings, **overrides))
            for i, answer in zip(textless, answers, strict=True):
                results[i] = answer
        return results

    @functools.cached_property
    def wide_tokens(self) -> torch.Tensor:
        """The tokens whose glyphs are wide (CJK): the reading head reads each run of their frames as one."""
        return wide_tokens(self.processor.tokenizer, self.model.config.text_config.vocab_size).to(self.device)

    @functools.cached_property
    def letter_tokens(self) -> torch.Tensor:
        """The narrow letters and digits: a run of one is read as two where the blank peaks inside it."""
        return letter_tokens(self.processor.tokenizer, self.model.config.text_config.vocab_size).to(self.device)

    @functools.cached_property
    def lexicon_reader(self) -> LexiconReader | None:
        """The model folder's word list bound to the tokenizer, when it has one and config.lexicon_nats > 0, with
        the Chinese re-ranking at config.chinese_bigram_weight (> 0)."""
        config, tok = self.model.config, self.processor.tokenizer
        nats = getattr(config, "lexicon_nats", 0.0)
        if self.processor.lexicon is None or nats <= 0:
            return None
        weight = getattr(config, "chinese_bigram_weight", 0.0)
        chinese = ChineseReranker(tok, config.text_config.vocab_size, weight) if weight > 0 else None
        return LexiconReader(self.processor.lexicon, tok, config.text_config.vocab_size, nats, chinese=chinese)

    def photo_answers(self, images: list[ImageInput]) -> list[str | None]:
        """Per image, the nature sentence it is answered with when it is a photograph, else None: the sentence the
        decoder finds likeliest (`nature_nll`) when its NLL is below config.photo_nll_threshold. Scoring the
        closed set of answers asks the decoder only what it was trained to tell (photograph or text), not to
        spell the sentence itself."""
        threshold = getattr(self.model.config, "photo_nll_threshold", None)
        if threshold is None or not images:
            return [None] * len(images)
        best_nll, best = self.nature_nll(images).min(1)
        pairs = zip(best_nll.tolist(), best.tolist(), strict=True)
        return [NATURE_SENTENCES[b] if v < threshold else None for v, b in pairs]

    def nature_nll(self, images: list[ImageInput]) -> torch.Tensor:
        """(images, NATURE_SENTENCES) mean NLL per token (EOS included) of each sentence after the OCR prompt,
        under the decoder: one teacher-forced pass of images x sentences rows, each image encoded once."""
        tok = self.processor.tokenizer
        prompt = self.processor.prompt_ids(self.prompt_style.instruction("ocr", None, None, False, model=self.name))
        answers = [tok.encode(s, add_special_tokens=False) + [tok.eos_token_id] for s in NATURE_SENTENCES]
        width, n = len(prompt) + max(map(len, answers)), len(answers)
        ids = torch.full((n, width), tok.pad_token_id if tok.pad_token_id is not None else 0)
        scored = torch.zeros((n, width), dtype=torch.bool)  # the answer tokens whose likelihood counts
        for row, answer in enumerate(answers):
            ids[row, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
            scored[row, len(prompt) : len(prompt) + len(answer)] = True
        pixels = torch.stack([self.processor.image_tensor(image) for image in images])  # ImageError before work
        rows = ids.repeat(len(images), 1).to(self.device)  # image i's answers are rows i*n .. i*n+n-1
        with self._lock, torch.inference_mode():
            features = self.model.encode_images(pixels.to(self.device))  # once per image, not per answer
            embeds = self.model.get_input_embeddings()(rows)
            embeds = self.model.splice_image_features(rows, embeds, features.repeat_interleave(n, 0))
            # padding follows each answer (causal: no earlier token sees it), so every position may attend
            keep = width - len(prompt) + 1  # logits only where an answer token is predicted
            logits = self.model(inputs_embeds=embeds, attention_mask=torch.ones_like(rows), logits_to_keep=keep).logits
        logp = logits[:, :-1].float().log_softmax(-1).gather(-1, rows[:, -keep + 1 :, None])[..., 0]
        mask = scored[:, -keep + 1 :].repeat(len(images), 1).to(self.device)
        return (-(logp * mask).sum(1) / mask.sum(1)).view(len(images), n).cpu()

    def _batch(self, images, instructions, crop: bool | None, max_tiles: int | None) -> dict[str, torch.Tensor]:
        crop = self.crop if crop is None else crop
        if crop:
            self.prompt_style.check(None, crop=True, model=self.name)
        return self.processor(images, instructions, crop=crop, max_tiles=max_tiles or self.max_tiles)

    def _generate(self, batch, task, streamer, cancel, settings: GenerationSettings, watcher=None) -> list[Result]:
        """`watcher` (optional) is told the guard and prompt length and returns a StoppingCriteria that sees every
        step: the server's batcher (serve/batching.py) stops rows at their own budget and hands back finished rows."""
        tok = self.processor.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        end_ids = self._end_token_ids()
        prompt_length = batch["input_ids"].shape[1]
        guard = LoopGuard(prompt_length, pad_id, settings.loop_guard)
        criteria = [guard] + ([CancelCriteria(cancel)] if cancel is not None else [])
        if watcher is not None:
            criteria.append(watcher(guard, prompt_length))  # after the guard: it reads the guard's cuts
        kwargs = dict(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample, pad_token_id=pad_id,
                      eos_token_id=sorted(end_ids), stopping_criteria=StoppingCriteriaList(criteria))  # fmt: skip
        if settings.do_sample:
            kwargs |= dict(temperature=settings.temperature, top_p=settings.top_p)
        # Ours instead of transformers' (same rule, vectorised); 0 keeps a generation_config value from adding theirs.
        kwargs["no_repeat_ngram_size"] = 0
        if ngram := self.no_repeat_ngram_size(settings):
            kwargs["logits_processor"] = LogitsProcessorList([NoRepeatNGram(ngram)])
        if self.template.stop and not self._single_token(self.template.stop):
            kwargs |= dict(stop_strings=[self.template.stop], tokenizer=tok)  # plain-text stop: HF matches it
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with self._lock, torch.inference_mode():
            sequences = self.model.generate(**batch, streamer=streamer, **kwargs)
        return [self.decode_row(sequences, prompt_length, row, guard, task) for row in range(sequences.shape[0])]

    def decode_row(self, sequences: torch.Tensor, prompt_length: int, row: int, guard: LoopGuard, task: str) -> Result:
        """One row of a (possibly still running) generation -> its Result."""
        ids, looped = generated_ids(sequences, prompt_length, row, guard, self._end_token_ids())
        text = clean_text(self.processor.tokenizer.decode(ids, skip_special_tokens=True), self.template.stop)
        return Result(text, task, looped, len(ids))

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
        box: tuple[float, float, float, float] | None = None,
        color: str | None = None,
        crop: bool | None = None,
        max_tiles: int | None = None,
        **overrides,
    ) -> list[Result]:
        """Several images, the same task; generated `batch_size` at a time (left-padded prompts).

        GOT-OCR2 models: `box` (x1, y1, x2, y2 in the image's pixels) or `color` ("red", "green", "blue") ask
        for that region's or colour's text; `crop` uses multi-crop mode with up to `max_tiles` tiles."""
        images, instructions = self.instructions(list(images), task, question, box, color, crop)
        results: list[Result] = []
        for start in range(0, len(images), batch_size):
            chunk = slice(start, start + batch_size)
            results += self.generate(images[chunk], instructions[chunk], task, crop=crop, max_tiles=max_tiles,
                                     **overrides)  # fmt: skip
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
        self,
        pages: Iterable[Page],
        task: str = "ocr",
        question: str | None = None,
        batch_size: int = 4,
        box: tuple[float, float, float, float] | None = None,
        color: str | None = None,
        crop: bool | None = None,
        max_tiles: int | None = None,
        cancel: threading.Event | None = None,
        errors: list[tuple[Page, DocumentError]] | None = None,
        **overrides,
    ) -> Iterator[tuple[Page, Result]]:
        """Document pages (see documents.py) in batches, rendered lazily; yields (page, result) in order.

        Options as for run_batch; a box is in the pixels of each rendered page. `cancel` (set from another
        thread) stops generation at the next token and skips the remaining pages. With `errors` (a list), a page
        that cannot be decoded is appended as (page, error) and skipped, so one corrupt file does not cost the
        others' results; without it the error is raised."""
        self.check_prompt(task, question, box, color, crop)  # fail before rendering any page
        pages = list(pages)
        for start in range(0, len(pages), batch_size):
            if cancel is not None and cancel.is_set():
                return
            chunk, images = [], []
            for page in pages[start : start + batch_size]:
                try:
                    images.append(page.image())
                    chunk.append(page)
                except DocumentError as err:
                    if errors is None:
                        raise
                    errors.append((page, err))
            if chunk:
                images, instructions = self.instructions(images, task, question, box, color, crop)
                results = self.generate(
                    images, instructions, task, cancel=cancel, crop=crop, max_tiles=max_tiles, **overrides
                )
                yield from zip(chunk, results, strict=True)

    def stream(
        self,
        image: ImageInput,
        task: str = "ocr",
        question: str | None = None,
        box: tuple[float, float, float, float] | None = None,
        color: str | None = None,
        crop: bool | None = None,
        max_tiles: int | None = None,
        **overrides,
    ) -> TextStream:
        """Text chunks as they are generated; the final Result is `.result` once the stream is exhausted."""
        if self.reads_with_head(task):  # one forward pass: the whole text is one chunk
            return ReadStream(self.read([image], crop, max_tiles, task, **overrides)[0])
        images, instructions = self.instructions([image], task, question, box, color, crop)
        batch = self._batch(images, instructions, crop, max_tiles)  # bad images fail here, not in the thread
        return TextStream(self, batch, task, dataclasses.replace(self.settings, **overrides))


class ReadStream:
    """A TextStream whose text is already read (the reading head): one chunk, nothing to cancel."""

    def __init__(self, result: Result):
        self.result = result

    def __iter__(self) -> Iterator[str]:
        if self.result.text:
            yield self.result.text

    def cancel(self) -> None:
        pass


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
