"""Task prompts and fixed targets shared by the data engine, training and inference.

One place for every string the model is trained or asked with, so a data shard, a training run and
an inference call can never disagree. Sources: the Vary paper and the official demo scripts.
"""

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
