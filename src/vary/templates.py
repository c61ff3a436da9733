"""Conversation templates: how an image, an instruction and an answer become one string.

Matches the official Vary formats:
  plain      Vary-tiny, no instruction:      <img>{pad}</img>\\n{answer}\\n</s>   (bos added by the tokenizer)
  vicuna_v1  Vicuna v1 (English Vary-base):  {system} USER: <img>{pad}</img>{instruction} ASSISTANT:{answer}</s>
  mpt        LLaVA-MPT (QWen Vary-base):     <|im_start|>system\\n...<|im_end|><|im_start|>user\\n<img>{pad}</img>
                                             {instruction}<|im_end|><|im_start|>assistant\\n{answer}<|im_end|>
Training computes loss on `answer + answer_end` only; inference stops at `stop`.
"""

from __future__ import annotations

from dataclasses import dataclass

from vary.prompts import IMAGE_END_TOKEN, IMAGE_PATCH_TOKEN, IMAGE_START_TOKEN

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
MPT_SYSTEM = "<|im_start|>system\nYou should follow the instructions carefully and explain your answers in detail."


@dataclass(frozen=True)
class Template:
    name: str
    prefix: str  # before the image block
    infix: str  # between the image block and the instruction
    suffix: str  # after the instruction, right before the answer
    answer_end: str  # after the answer; trained on, and where generation stops
    uses_instruction: bool = True
    followup: str = ""  # before the instruction of a later turn of a multi-turn conversation (no image block)

    def prompt(self, instruction: str = "", num_images: int = 1, image_token_len: int = 256) -> str:
        """Everything the model reads before it starts answering."""
        images = image_block(image_token_len) * num_images
        text = instruction if self.uses_instruction else ""
        return f"{self.prefix}{images}{self.infix}{text}{self.suffix}"

    @property
    def stop(self) -> str:
        return self.answer_end.strip() or self.answer_end


def image_block(image_token_len: int) -> str:
    return IMAGE_START_TOKEN + IMAGE_PATCH_TOKEN * image_token_len + IMAGE_END_TOKEN


TEMPLATES: dict[str, Template] = {
    "plain": Template("plain", prefix="", infix="\n", suffix="", answer_end="\n</s>", uses_instruction=False),
    "vicuna_v1": Template(
        "vicuna_v1",
        prefix=f"{VICUNA_SYSTEM} USER: ",
        infix="",
        suffix=" ASSISTANT:",
        answer_end="</s>",
        followup="USER: ",
    ),
    "mpt": Template(
        "mpt",
        prefix=f"{MPT_SYSTEM}<|im_end|><|im_start|>user\n",
        infix="",
        suffix="<|im_end|><|im_start|>assistant\n",
        answer_end="<|im_end|>",
        followup="<|im_start|>user\n",
    ),
}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise KeyError(f"unknown conversation template {name!r}; choose one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]
