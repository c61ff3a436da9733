"""Initialise a model for training: from scratch, or from any subset of local weight folders.

No intermediate weights are needed (the official code needed a pretrained Vary to start). Each part can
come from its own folder or file, and every part says what it loaded, what it left at random init
(missing) and what in the folder had no place (unexpected):

    sam        official SAM checkpoint (`image_encoder.*`, e.g. sam_vit_b_01ec64.pth) or a transformers
               SamModel folder (`vision_encoder.*`)                      -> vision_vocab.encoder (net_2/net_3 stay random)
    llm        Hugging Face causal-LM folder (OPT, Qwen2, LLaMA...) or first-generation QWen (`transformer.h.*`)
                                                                         -> language_model (its config.json is used)
    clip       CLIPModel or CLIPVisionModel folder                        -> clip (its vision config is used)
    vary_tiny  a Vary-tiny checkpoint, ours or official                   -> vision_vocab (Vary-base's new vocabulary)
    checkpoint a whole Vary model (ours, a training checkpoint, official) -> everything; its config is used
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from vary.config import PRESETS, VaryConfig
from vary.modeling.loading import load_model
from vary.modeling.official import (
    convert_state_dict,
    load_state_dict,
    official_family,
    qwen_text_config,  # the config reader for first-generation QWen weights lives with the converter
    read_config,
)
from vary.modeling.tokenizer import IMAGE_TOKENS, train_bpe_tokenizer, train_char_tokenizer
from vary.modeling.vary import VaryForCausalLM
from vary.train.recipes import Recipe


class InitError(ValueError):
    """A weight folder that cannot initialise the model; the message names the folder and key."""


@dataclass
class PartReport:
    part: str
    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)  # left at their random initialisation
    unexpected: list[str] = field(default_factory=list)  # in the folder, with no place in the model
    resized: list[str] = field(default_factory=list)
    note: str = ""

    def line(self) -> str:
        text = f"{self.part:<12} " + (f"{self.loaded:>5} tensors from {self.source}" if self.loaded else self.source)
        if self.missing:
            text += f"\n{'':<13}missing (random init): {summarise(self.missing)}"
        if self.unexpected:
            text += f"\n{'':<13}unexpected (ignored): {summarise(self.unexpected)}"
        if self.resized:
            text += f"\n{'':<13}resized: {', '.join(self.resized)}"
        if self.note:
            text += f"\n{'':<13}{self.note}"
        return text


def summarise(keys: list[str], limit: int = 6) -> str:
    """Keys grouped by their first two dotted parts: a lone key in full, a group as 'mask_decoder.transformer.* (96)'."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(".".join(key.split(".")[:2]), []).append(key)
    items = [members[0] if len(members) == 1 else f"{head}.* ({len(members)})" for head, members in groups.items()]
    return ", ".join(items[:limit]) + (f", ... {len(items) - limit} more groups" if len(items) > limit else "")


def format_report(parts: list[PartReport]) -> str:
    return "initialisation:\n" + "\n".join("  " + p.line().replace("\n", "\n  ") for p in parts)


def save_report(parts: list[PartReport], path: Path) -> None:
    path.write_text(json.dumps([asdict(p) for p in parts], indent=1), encoding="utf-8")


# --- tokenizer ------------------------------------------------------------------------------------------------
def tokenizer_folder(recipe: Recipe) -> Path | None:
    """The tokenizer to use: named, else the checkpoint's, else the LLM's; None means train one on the data."""
    for candidate in (recipe.model.tokenizer, recipe.init.checkpoint, recipe.init.llm):
        if candidate:
            return Path(candidate)
    return None


def train_tokenizer(texts, vocab_size: int, folder: Path, kind: str = "bpe"):
    """A byte-level BPE or a character tokenizer (recipes.TOKENIZER_TYPES; validated with the recipe) on the
    training texts, special ids 0..5 as nano expects; saved to `folder`."""
    train = {"bpe": train_bpe_tokenizer, "chars": train_char_tokenizer}[kind]
    tokenizer = train(texts, vocab_size=vocab_size)
    tokenizer.save_pretrained(folder)
    return tokenizer


# --- config ---------------------------------------------------------------------------------------------------
def build_config(recipe: Recipe, tokenizer, llm_state: dict[str, torch.Tensor] | None = None) -> VaryConfig:
    """Preset + the LLM/CLIP folders' own configs + `model.config` overrides + the tokenizer's special ids."""
    fields = copy.deepcopy(PRESETS[recipe.model.preset])
    if recipe.init.llm:
        text = llm_text_config(Path(recipe.init.llm), llm_state)
        preset_text = fields["text_config"]
        if text.get("model_type") == preset_text.get("model_type") and "max_position_embeddings" in preset_text:
            # Keep the preset's context (Vary-tiny: OPT-125M's 2048 positions interpolated to 4096, as the paper).
            text["max_position_embeddings"] = max(
                text.get("max_position_embeddings", 0), preset_text["max_position_embeddings"]
            )
        fields["text_config"] = text
    if recipe.init.clip:
        if not fields.get("clip_config"):
            raise InitError(
                f"init.clip={recipe.init.clip!r} but model.preset={recipe.model.preset!r} has no CLIP branch"
            )
        fields["clip_config"] = clip_vision_config(Path(recipe.init.clip))
    for key, value in recipe.model.config.items():
        if isinstance(value, dict) and isinstance(fields.get(key), dict):
            fields[key] = {**fields[key], **value}
        else:
            fields[key] = value
    ids = [tokenizer.convert_tokens_to_ids(t) for t in IMAGE_TOKENS]
    fields.update(image_start_token_id=ids[0], image_end_token_id=ids[1], image_patch_token_id=ids[2])
    text = dict(fields["text_config"])
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if getattr(tokenizer, name, None) is not None:
            text[name] = getattr(tokenizer, name)
    if not recipe.init.llm:  # from scratch: room for every token (an LLM's rows are resized after loading)
        text["vocab_size"] = max(int(text.get("vocab_size", 0)), len(tokenizer))
    fields["text_config"] = text
    try:
        return VaryConfig(**fields)
    except (TypeError, ValueError) as err:
        raise InitError(
            f"{recipe.source}: model.preset={recipe.model.preset!r} + model.config give an invalid config: {err}"
        ) from err


def llm_text_config(folder: Path, state: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    cfg = read_config(folder)
    if cfg.get("model_type") == "qwen":  # first-generation QWen (remote code): sizes come from the weights
        return qwen_text_config(cfg, state if state is not None else read_weights(folder))
    if "model_type" not in cfg:
        raise InitError(f"{folder}/config.json: no model_type; is this a Hugging Face causal-LM folder?")
    return cfg


def clip_vision_config(folder: Path) -> dict[str, Any]:
    cfg = read_config(folder)
    vision = cfg.get("vision_config", cfg) if cfg.get("model_type") == "clip" else cfg
    if cfg.get("model_type") not in ("clip", "clip_vision_model"):
        raise InitError(f"{folder}/config.json: model_type {cfg.get('model_type')!r} is not a CLIP model")
    return {**vision, "model_type": "clip_vision_model"}


# --- weights --------------------------------------------------------------------------------------------------
def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A folder (safetensors or .bin, sharded or not) or a single weights file."""
    path = Path(path)
    if path.is_dir():
        return load_state_dict(path)
    if not path.is_file():
        raise InitError(f"{path}: no such weights file or folder")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return state.get("model", state) if isinstance(state, dict) else state


def map_sam(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    if any(k.startswith("image_encoder.") for k in state):  # official SAM: reuse the Vary-tiny converter
        ours = {
            "model.vision_tower_2." + k[len("image_encoder.") :]: v
            for k, v in state.items()
            if k.startswith("image_encoder.")
        }
        return convert_state_dict(ours, "opt"), [k for k in state if not k.startswith("image_encoder.")]
    if any(k.startswith("vision_encoder.") for k in state):  # transformers SamModel
        mapped = {
            "vision_vocab.encoder." + k[len("vision_encoder.") :]: v
            for k, v in state.items()
            if k.startswith("vision_encoder.")
        }
        return mapped, [k for k in state if not k.startswith("vision_encoder.")]
    raise InitError("no SAM image encoder weights (expected image_encoder.* or vision_encoder.* keys)")


def map_llm(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    if any(k.startswith("transformer.h.") for k in state):  # first-generation QWen
        keep = {
            k: v
            for k, v in state.items()
            if k.startswith(("transformer.h.", "transformer.wte.", "transformer.ln_f.", "lm_head."))
        }
        return convert_state_dict(keep, "qwen"), [k for k in state if k not in keep]
    if any(k.startswith("decoder.") for k in state):  # a bare OPTModel
        return {"language_model.model." + k: v for k, v in state.items()}, []
    return {"language_model." + k: v for k, v in state.items()}, []


def map_clip(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    mapped, unexpected = {}, []
    for key, value in state.items():
        if key.startswith("vision_model."):  # CLIPModel, or a CLIPVisionModel saved by transformers 4
            mapped["clip." + key[len("vision_model.") :]] = value
        elif key.startswith(("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")):  # transformers 5
            mapped["clip." + key] = value
        else:
            unexpected.append(key)  # text tower, projections, logit_scale
    return mapped, unexpected


def map_vary_tiny(folder: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    family = official_family(read_config(folder))
    state = load_state_dict(folder)
    if family is not None:
        state = convert_state_dict(state, family)
    mapped = {k: v for k, v in state.items() if k.startswith("vision_vocab.")}
    if not mapped:
        raise InitError(f"{folder}: no vision vocabulary weights in this Vary-tiny checkpoint")
    return mapped, [k for k in state if k not in mapped and not k.startswith(("language_model.", "projector"))]


def assign_part(model: VaryForCausalLM, part: str, prefix: str, mapped: dict[str, torch.Tensor], unexpected: list[str],
                source: str) -> PartReport:  # fmt: skip
    """Copy `mapped` into the model's `prefix` parameters; shapes must match (positions are interpolated)."""
    own = model.state_dict()
    tied = {"language_model.lm_head.weight"} if model.config.tie_word_embeddings else set()
    report = PartReport(part, source, unexpected=list(unexpected))
    to_load = {}
    for key, tensor in mapped.items():
        if key in tied:
            continue
        if key not in own:
            report.unexpected.append(key)
            continue
        if tensor.shape != own[key].shape:
            if key.endswith("embed_positions.weight") and tensor.shape[1:] == own[key].shape[1:]:
                tensor = interpolate_positions(tensor, own[key].shape[0])
                report.resized.append(f"{key} {tuple(mapped[key].shape)} -> {tuple(tensor.shape)} (interpolated)")
            else:
                raise InitError(
                    f"{source}: weight {key} has shape {tuple(tensor.shape)} but the model's is "
                    f"{tuple(own[key].shape)}; set model.config to match the folder (or drop this init entry)"
                )
        to_load[key] = tensor
    report.missing = sorted(k for k in own if k.startswith(prefix) and k not in to_load and k not in tied)
    model.load_state_dict(to_load, strict=False)
    report.loaded = len(to_load)
    return report


def interpolate_positions(table: torch.Tensor, rows: int, offset: int = 2) -> torch.Tensor:
    """OPT's learned positions (first `offset` rows reserved) stretched linearly to `rows` rows."""
    body = table[offset:].T.unsqueeze(0).float()  # (1, H, P)
    body = torch.nn.functional.interpolate(body, size=rows - offset, mode="linear", align_corners=True)
    return torch.cat([table[:offset], body[0].T.to(table.dtype)])


def build_model(recipe: Recipe, tokenizer) -> tuple[VaryForCausalLM, list[PartReport]]:
    """The model the recipe asks for, with every init folder applied; returns it with one report per part."""
    init, reports = recipe.init, []
    if init.checkpoint:
        model = load_model(init.checkpoint)
        reports.append(PartReport("checkpoint", init.checkpoint, loaded=len(model.state_dict()),
                                  note="model.preset and model.config are ignored: the checkpoint's config is used"
                                  if recipe.model.config else ""))  # fmt: skip
        llm_state = None
    else:
        llm_state = read_weights(init.llm) if init.llm else None
        model = VaryForCausalLM(build_config(recipe, tokenizer, llm_state))
        if not any((init.sam, init.llm, init.clip, init.vary_tiny)):
            reports.append(PartReport("all", "random initialisation (from scratch)"))
    if init.sam:
        mapped, unexpected = map_sam(read_weights(init.sam))
        # Part prefix vision_vocab.: net_2/net_3 (not in SAM) are reported as left at random init.
        reports.append(assign_part(model, "sam", "vision_vocab.", mapped, unexpected, init.sam))
    if init.vary_tiny:
        mapped, unexpected = map_vary_tiny(Path(init.vary_tiny))
        reports.append(assign_part(model, "vary_tiny", "vision_vocab.", mapped, unexpected, init.vary_tiny))
    if init.clip:
        if model.clip is None:
            raise InitError(f"init.clip={init.clip!r} but model.preset={recipe.model.preset!r} has no CLIP branch")
        mapped, unexpected = map_clip(read_weights(init.clip))
        reports.append(assign_part(model, "clip", "clip.", mapped, unexpected, init.clip))
    if init.llm:
        mapped, unexpected = map_llm(llm_state if llm_state is not None else read_weights(init.llm))
        reports.append(assign_part(model, "llm", "language_model.", mapped, unexpected, init.llm))
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
        reports.append(
            PartReport(
                "embeddings",
                "sized to the tokenizer",
                note=f"resized {rows} -> {model.config.text_config.vocab_size} rows",
            )
        )
    return model, reports
