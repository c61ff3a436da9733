"""Task prompts and fixed targets shared by the data engine, training and inference.

One place for every string the model is trained or asked with, so a data shard, a training run and
an inference call can never disagree. Sources: the Vary paper and the official demo scripts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Task name -> instruction used by templated models (Vicuna v1 / MPT-QWen). Plain Vary-tiny sees no prompt.
TASK_PROMPTS: dict[str, str] = {
    "ocr": "Provide the OCR results of this image.",
    "ocr_zh": "写出这幅图中所有文字。",
    "markdown": "Convert the image to markdown format.",
    "table_latex": "Convert this table to latex format.",
    "table_markdown": "Convert the image to markdown format.",
    "chart": "Convert this chart to python-dict",
    "natural": "Provide the OCR results of this image.",
}

# Appended to a question for DocVQA/ChartQA-style answers.
SHORT_ANSWER_SUFFIX = "Answer the following questions using a single word or phrase:"

# Charts: the answer is this prefix followed by a python-dict literal with `title` and `data`.
CHART_ANSWER_PREFIX = "The dict of the chart is: "

# Vary-tiny's targets for natural images (negatives), verbatim from the paper.
NATURE_SENTENCES: tuple[str, ...] = (
    "It's an image of nature",
    "Here's a nature picture",
    "It's a nature photo",
    "This is a natural image",
    "That's a shot from nature",
)

# Image placeholder tokens, as in the official tokenizers.
IMAGE_START_TOKEN = "<img>"
IMAGE_END_TOKEN = "</img>"
IMAGE_PATCH_TOKEN = "<imgpad>"


def ask_prompt(question: str) -> str:
    """Prompt for a short-answer question about a document or chart."""
    return f"{question.strip()}\n{SHORT_ANSWER_SUFFIX}"


# --- per-model prompt sets ----------------------------------------------------------------------------
# GOT-OCR2 is asked with short fixed queries (official GOT demo and chat()/chat_crop()), after "</img>\n".
GOT_QUERIES: dict[str, str] = {"ocr": "OCR: ", "markdown": "OCR with format: "}
# Multi-crop mode (several tiles + a thumbnail in one image block) has its own queries.
GOT_CROP_QUERIES: dict[str, str] = {
    "ocr": "OCR upon the patch reference: ",
    "markdown": "OCR with format upon the patch reference: ",
}
GOT_COLORS = ("red", "green", "blue")  # fine-grained OCR by text colour, as GOT was trained
GOT_BOX_SCALE = 1000  # boxes are given to GOT in a 0-1000 grid over the image's width and height


class PromptError(ValueError):
    """A task or prompt option the model's prompt set does not support."""


def parse_box(text: str) -> tuple[float, float, float, float]:
    """ "x1,y1,x2,y2" (pixels, as the CLI and the HTTP form take it) -> four numbers."""
    try:
        box = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise PromptError(f"box {text!r}: expected four numbers x1,y1,x2,y2 (pixels)")
    return box


def box_to_grid(box: tuple[float, ...] | list[float], width: int, height: int) -> list[int]:
    """A pixel box (x1, y1, x2, y2) -> GOT's 0-1000 integer grid, truncated as GOT's demo does (int(x / w * 1000))."""
    if len(box) != 4:
        raise PromptError(f"a box is x1,y1,x2,y2 (4 numbers), got {len(box)}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise PromptError(
            f"box {x1:g},{y1:g},{x2:g},{y2:g} is not inside the {width}x{height} image with x1 < x2 and y1 < y2"
        )
    return [int(x1 / width * GOT_BOX_SCALE), int(y1 / height * GOT_BOX_SCALE),
            int(x2 / width * GOT_BOX_SCALE), int(y2 / height * GOT_BOX_SCALE)]  # fmt: skip


@dataclass(frozen=True)
class PromptStyle:
    """How a model family is asked: its task instructions and the prompt options it was trained for.

    Chosen by `VaryConfig.prompt_style`, so a loader only names the family. `tasks` maps our task names to
    instructions (a task not in it is refused); `image_separator` goes between </img> and the instruction.
    """

    name: str
    tasks: dict[str, str]
    image_separator: str = ""
    fine_grained: bool = False  # box / colour queries
    crop: bool = False  # multi-crop mode (crop_tasks)
    crop_tasks: dict[str, str] = field(default_factory=dict)
    no_repeat_ngram_size: int = 0  # generation default for this family (0: off)
    unsupported_task_hint: str = ""  # appended to the error for a task not in `tasks`

    def instruction(
        self,
        task: str,
        box: list[int] | None = None,
        color: str | None = None,
        crop: bool = False,
        model: str = "this model",
    ) -> str:
        """The instruction for `task`; `box` is already on GOT's 0-1000 grid (see box_to_grid)."""
        self.check(task, box is not None, color, crop, model)
        if crop:
            return self.crop_tasks[task]
        query = self.tasks[task]
        if box is not None:
            return f"{[int(v) for v in box]} {query}"  # str(list), "[x1, y1, x2, y2]", as GOT's demo writes it
        if color is not None:
            return f"[{color}] {query}"
        return query

    def check(self, task: str | None, box: bool = False, color: str | None = None, crop: bool = False,
              model: str = "this model") -> None:  # fmt: skip
        """Raise PromptError (one line) for a task (None: any) or option this prompt set does not have."""
        if task is not None and task not in self.tasks:
            raise PromptError(
                f"{model} ({self.name} prompts) supports tasks {', '.join(self.tasks)}, not {task!r}"
                + (f" ({self.unsupported_task_hint})" if self.unsupported_task_hint else "")
            )
        if (box or color is not None) and not self.fine_grained:
            raise PromptError(f"{model} ({self.name} prompts) has no fine-grained (box / colour) prompts")
        if box and color is not None:
            raise PromptError("a box and a colour cannot be combined: GOT was trained with one or the other")
        if color is not None and color not in GOT_COLORS:
            raise PromptError(f"colour must be one of {', '.join(GOT_COLORS)}, got {color!r}")
        if crop and not self.crop:
            raise PromptError(f"{model} ({self.name} prompts) has no multi-crop mode")
        if crop and (box or color is not None):
            raise PromptError("multi-crop mode has no box / colour prompts: use one or the other")


PROMPT_STYLES: dict[str, PromptStyle] = {
    # Vary: one instruction per task; questions too ("ask": the question itself, see ask_prompt).
    "vary": PromptStyle("vary", tasks={**TASK_PROMPTS, "ask": ""}),
    # GOT-OCR2: plain and formatted OCR only (charts, tables and formulas all come from "OCR with format: ").
    # no_repeat_ngram_size=20 as in GOT's demo.
    "got": PromptStyle(
        "got",
        tasks=GOT_QUERIES,
        image_separator="\n",
        fine_grained=True,
        crop=True,
        crop_tasks=GOT_CROP_QUERIES,
        no_repeat_ngram_size=20,
        unsupported_task_hint="GOT-OCR2 answers no questions; it reads charts, tables and formulas with task markdown",
    ),
}


def get_prompt_style(name: str) -> PromptStyle:
    if name not in PROMPT_STYLES:
        raise KeyError(f"unknown prompt style {name!r}; choose one of {sorted(PROMPT_STYLES)}")
    return PROMPT_STYLES[name]
