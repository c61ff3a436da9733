"""GOT-OCR2 in transformers' own format (`GotOcr2ForConditionalGeneration`, model_type "got_ocr2"), both ways.

transformers' GOT is our GOT-OCR2 preset under other names (its SAM encoder is the same module as ours):

  ours                       transformers' files (what save_pretrained writes)   its module names (also read)
  vision_vocab.encoder.*     vision_tower.*                                       model.vision_tower.*
  vision_vocab.net_2 / net_3 multi_modal_projector.conv_upsampler1 / conv_upsampler2 (model. prefixed)
  projector_vary             multi_modal_projector.multimodal_projector            (model. prefixed)
  language_model.model.*     language_model.model.*                               model.language_model.*
  language_model.lm_head     language_model.lm_head (tied: absent)                lm_head
transformers 5 renames its files' keys to module names on load and back on save (its conversion mapping).

Its layout fixes two sizes ours leaves free: net_2 has 2 x the neck's channels, and net_3 emits the LM width
(its projector is Linear(hidden, hidden)). Exporting a model of another shape is refused.
Its config holds only the <imgpad> id (image_token_index); <img> and </img> come from the tokenizer when the
folder has one, else the two ids just before <imgpad> (GOT's vocabulary: 151857, 151858, 151859).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from vary.config import CLIP_MEAN, CLIP_STD, VaryConfig
from vary.modeling.official import CheckpointError, assign_weights, load_state_dict, read_config

HF_MODEL_TYPE = "got_ocr2"
HF_ARCHITECTURE = "GotOcr2ForConditionalGeneration"
# GotOcr2VisionConfig's fields, every one of which SamVisionConfig has with the same meaning.
SAM_FIELDS = ("hidden_size", "output_channels", "num_hidden_layers", "num_attention_heads", "num_channels",
              "image_size", "patch_size", "hidden_act", "layer_norm_eps", "qkv_bias", "use_abs_pos", "use_rel_pos",
              "window_size", "global_attn_indexes", "mlp_dim")  # fmt: skip

# (transformers module-name prefix, ours); file key names are first renamed to module names by _ON_DISK.
_HF_TO_OURS = [
    ("model.vision_tower.", "vision_vocab.encoder."),
    ("model.multi_modal_projector.conv_upsampler1.", "vision_vocab.net_2."),
    ("model.multi_modal_projector.conv_upsampler2.", "vision_vocab.net_3."),
    ("model.multi_modal_projector.multimodal_projector.", "projector_vary."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
]
_ON_DISK = [  # file key -> module name
    ("language_model.lm_head.", "lm_head."),
    ("language_model.model.", "model.language_model."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
]


_RESAMPLE_NAMES = {2: "bilinear", 3: "bicubic"}  # PIL's enum values, as preprocessor_config.json stores them


def is_hf_got(config: dict[str, Any]) -> bool:
    return config.get("model_type") == HF_MODEL_TYPE or HF_ARCHITECTURE in (config.get("architectures") or [])


def _rename(key: str, table: list[tuple[str, str]]) -> str | None:
    for old, new in table:
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def hf_keys_to_vary(keys: Iterable[str]) -> dict[str, str]:
    """transformers' GOT keys (file or module names) -> ours, as {our key: its key}. Raises CheckpointError naming
    keys it cannot place."""
    out, unknown = {}, []
    for key in keys:
        current = _rename(key, _ON_DISK) or key
        new = _rename(current, _HF_TO_OURS)
        if new is None:
            unknown.append(key)
        else:
            out[new] = key
    if unknown:
        raise CheckpointError(f"GotOcr2 checkpoint has {len(unknown)} key(s) with no place in Vary: {unknown[:5]}")
    return out


def hf_state_dict_to_vary(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' GOT state dict -> ours (see hf_keys_to_vary)."""
    return {new: sd[key] for new, key in hf_keys_to_vary(sd).items()}


def vary_state_dict_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inverse = [(ours, hf) for hf, ours in _HF_TO_OURS]
    out = {}
    for key, tensor in sd.items():
        new = _rename(key, inverse)
        if new is None:
            raise CheckpointError(f"weight {key} has no place in GotOcr2ForConditionalGeneration")
        out[new] = tensor
    return out


def _image_token_ids(folder: Path, image_token_index: int) -> dict[str, int]:
    """<img>/</img>/<imgpad> ids: from tokenizer.json's added tokens when present, else GOT's numbering."""
    ids = {"<img>": image_token_index - 2, "</img>": image_token_index - 1}
    tokenizer_file = folder / "tokenizer.json"
    if tokenizer_file.is_file():
        added = {t["content"]: t["id"] for t in json.loads(tokenizer_file.read_text()).get("added_tokens", [])}
        ids = {token: added.get(token, idx) for token, idx in ids.items()}
    return dict(image_start_token_id=ids["<img>"], image_end_token_id=ids["</img>"],
                image_patch_token_id=image_token_index)  # fmt: skip


def _preprocessing(folder: Path) -> dict[str, Any]:
    """Mean/std/resampling from the folder's preprocessor_config.json (GotOcr2ImageProcessor); GOT's by default."""
    fields: dict[str, Any] = dict(image_mean=CLIP_MEAN, image_std=CLIP_STD, image_resample="bicubic")
    path = folder / "preprocessor_config.json"
    if path.is_file():
        cfg = json.loads(path.read_text())
        fields |= {k: tuple(cfg[k]) for k in ("image_mean", "image_std") if k in cfg}
        if cfg.get("resample") in _RESAMPLE_NAMES:
            fields["image_resample"] = _RESAMPLE_NAMES[cfg["resample"]]
    return fields


def hf_config_to_vary(cfg: dict[str, Any], folder: Path, **overrides: Any) -> VaryConfig:
    vision = {
        k: v for k, v in (cfg.get("vision_config") or {}).items() if k not in ("model_type", "transformers_version")
    }
    text = dict(cfg.get("text_config") or {})
    if not vision or not text:
        raise CheckpointError(f"{folder}/config.json: a got_ocr2 config needs vision_config and text_config")
    from transformers import GotOcr2Config

    full = GotOcr2Config(vision_config=vision, text_config=text)  # fills transformers' defaults for absent fields
    v, t = full.vision_config, full.text_config
    grid = v.image_size // v.patch_size // 4  # two stride-2 convs after the neck
    fields: dict[str, Any] = dict(
        vision_config={k: getattr(v, k) for k in SAM_FIELDS},
        downsample_channels=[2 * v.output_channels, t.hidden_size],
        text_config=t.to_dict(),
        template="mpt",
        prompt_style="got",
        image_token_len=grid * grid,
        **_image_token_ids(folder, cfg.get("image_token_index", 151859)),
        **_preprocessing(folder),
    )  # fmt: skip
    return VaryConfig(**(fields | overrides))


def load_hf_got(folder: str | Path, dtype: torch.dtype = torch.float32, **overrides: Any):
    """Load a GotOcr2ForConditionalGeneration folder as a VaryForCausalLM, strictly (every weight placed)."""
    from vary.modeling.vary import VaryForCausalLM

    folder = Path(folder)
    config = hf_config_to_vary(read_config(folder), folder, **overrides)
    state = hf_state_dict_to_vary(load_state_dict(folder))
    with torch.device("meta"):
        model = VaryForCausalLM(config)
    model = model.to_empty(device="cpu")
    assign_weights(model, state, source=str(folder), dtype=dtype)
    return model.eval()


def vary_config_to_hf(config: VaryConfig):
    """Our config as a GotOcr2Config, or CheckpointError saying what transformers' GOT cannot express."""
    from transformers import GotOcr2Config

    problems = []
    if config.clip_config is not None:
        problems.append("it has a CLIP branch (Vary-base/toy)")
    if config.projector_norm:
        problems.append("it has a projector LayerNorm")
    if config.text_config.model_type != "qwen2":
        problems.append(f"its decoder is {config.text_config.model_type}, not qwen2")
    hidden, neck = int(config.text_config.hidden_size), int(config.vision_config.output_channels)
    if list(config.downsample_channels) != [2 * neck, hidden]:
        problems.append(
            f"net_2/net_3 give {list(config.downsample_channels)} channels, GotOcr2 needs [{2 * neck}, {hidden}]"
        )
    if problems:
        raise CheckpointError("cannot write as GotOcr2ForConditionalGeneration: " + "; ".join(problems))
    vision = {k: getattr(config.vision_config, k) for k in SAM_FIELDS}
    text = config.text_config.to_dict()
    return GotOcr2Config(vision_config=vision, text_config=text, image_token_index=config.image_patch_token_id,
                         image_seq_length=config.image_token_len,
                         tie_word_embeddings=config.tie_word_embeddings, architectures=[HF_ARCHITECTURE])  # fmt: skip


def export_hf_got(model, dst: str | Path, tokenizer=None) -> Path:
    """Write `model` (a VaryForCausalLM of GOT's shape) as a folder GotOcr2ForConditionalGeneration loads."""
    from transformers import GotOcr2ForConditionalGeneration, GotOcr2ImageProcessorPil
    from transformers.image_utils import PILImageResampling

    model.refuse_if_quantized("export")

    hf_config = vary_config_to_hf(model.config)
    state = vary_state_dict_to_hf(model.state_dict())
    with torch.device("meta"):
        hf_model = GotOcr2ForConditionalGeneration(hf_config)
    missing, unexpected = hf_model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (hf_config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"GotOcr2 export: missing weights {missing[:5]}, unexpected weights {unexpected[:5]}")
    hf_model.tie_weights()
    hf_model.to(next(model.parameters()).dtype)
    dst = Path(dst)
    hf_model.save_pretrained(dst)
    c = model.config
    resample = {"bilinear": PILImageResampling.BILINEAR, "bicubic": PILImageResampling.BICUBIC}[c.image_resample]
    GotOcr2ImageProcessorPil(size={"height": c.image_size, "width": c.image_size}, resample=resample,
                             image_mean=list(c.image_mean), image_std=list(c.image_std)).save_pretrained(dst)  # fmt: skip
    if tokenizer is not None:
        tokenizer.save_pretrained(dst)
    return dst
