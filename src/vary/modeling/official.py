"""Recognise and convert official Vary checkpoints (varyOPTForCausalLM, varyQwenForCausalLM / mmgpt) and
GOT-OCR2's (GOTQwenForCausalLM, model_type "GOT").

Official layout -> ours:
  model.vision_tower_2.* | model.vision_tower.* (Vary-tiny, before/after a March 2024 rename)  -> vision_vocab.*
  transformer.vision_tower_high.* (Vary-base)                                                  -> vision_vocab.*
  transformer.vision_tower.* (CLIP-L)                                                          -> clip.*
  model.mm_projector / transformer.mm_projector_vary                                           -> projector_vary
  transformer.mm_projector (CLIP's)                                                            -> projector_clip
  model.decoder.* + lm_head (OPT)                                                              -> language_model.*
  transformer.{wte,h.*,ln_f} + lm_head (first-generation QWen)                                 -> Qwen2 layout
GOT-OCR2 (family "got"):
  model.vision_tower_high.* (SAM, Vary's layout)                                               -> vision_vocab.*
  model.mm_projector_vary.*                                                                    -> projector_vary
  model.{embed_tokens,layers.*,norm} + lm_head (Qwen2 already; lm_head tied, absent on disk)  -> language_model.*
QWen v1 -> Qwen2: c_attn (3H, H) splits into q/k/v; c_proj -> o_proj; MLP is c_proj(w1(x) * silu(w2(x))),
so w2 -> gate_proj, w1 -> up_proj, c_proj -> down_proj; ln_1/ln_2/ln_f -> input/post_attention layernorm/norm.
Sizes the weights can tell (SAM, CLIP, LM widths) are read from the weights; the rest from config.json.
Nothing in the checkpoint folder is executed: no remote code, `.bin` files load with weights_only=True.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from vary.config import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, QWEN_IMAGE_TOKENS, VaryConfig

OFFICIAL_ARCHITECTURES = {"varyOPTForCausalLM": "opt", "varyQwenForCausalLM": "qwen", "GOTQwenForCausalLM": "got"}
SAM_PREFIXES = ("model.vision_tower_2.", "model.vision_tower.", "transformer.vision_tower_high.",
                "model.vision_tower_high.")  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint folder or file that cannot be loaded; the message names the file or key."""


# --- reading ------------------------------------------------------------------------------------------
def read_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json; is this a model folder?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err


def official_family(config: dict[str, Any]) -> str | None:
    """'opt', 'qwen' (Vary) or 'got' (GOT-OCR2) for an official config.json, None for anything else (ours)."""
    for arch in config.get("architectures") or []:
        if arch in OFFICIAL_ARCHITECTURES:
            return OFFICIAL_ARCHITECTURES[arch]
    if config.get("model_type") == "GOT":
        return "got"
    if config.get("model_type") == "mmgpt":  # the released Vary-base
        return "qwen"
    if config.get("model_type") == "vary" and "text_config" not in config:
        return "qwen" if "kv_channels" in config else "opt"
    return None


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files: safetensors preferred, sharded (via its index) or not."""
    folder = Path(folder)
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):  # fmt: skip
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise CheckpointError(f"{index}: shard file(s) missing: {missing}")
            return [folder / s for s in shards]
        if (folder / single).is_file():
            return [folder / single]
    raise CheckpointError(f"{folder}: no weights (model.safetensors, pytorch_model.bin, or a sharded index)")


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    for path in files:
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as f:
                    for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                        yield key, f.get_tensor(key)
            else:
                yield from torch.load(path, map_location="cpu", weights_only=True, mmap=True).items()
        except CheckpointError:
            raise
        except (OSError, RuntimeError, ValueError, SafetensorError, pickle.UnpicklingError) as err:
            raise CheckpointError(f"{path}: cannot read weights ({err})") from err


def load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    return dict(iter_tensors(weight_files(folder)))


# --- config ------------------------------------------------------------------------------------------
def _count_numbered(sd: dict[str, torch.Tensor], pattern: str) -> int:
    """Number of blocks/layers: 1 + the largest index captured by `pattern` in the state dict's keys."""
    indices = [int(m.group(1)) for k in sd if (m := re.match(pattern, k))]
    if not indices:
        raise CheckpointError(f"no weights match {pattern!r}: the checkpoint is incomplete")
    return 1 + max(indices)


def _sam_config(sd: dict[str, torch.Tensor], prefix: str) -> tuple[dict[str, Any], list[int]]:
    """Every SAM size can be read off the weights (rel_pos rows tell window vs global blocks)."""
    proj = sd[prefix + "patch_embed.proj.weight"]  # (embed, 3, patch, patch)
    embed, patch = proj.shape[0], proj.shape[-1]
    grid = sd[prefix + "pos_embed"].shape[1]
    depth = _count_numbered(sd, re.escape(prefix) + r"blocks\.(\d+)\.")
    rel = [sd[f"{prefix}blocks.{i}.attn.rel_pos_h"].shape for i in range(depth)]
    head_dim = rel[0][1]
    global_blocks = [i for i, shape in enumerate(rel) if shape[0] == 2 * grid - 1]
    windows = {(shape[0] + 1) // 2 for i, shape in enumerate(rel) if i not in global_blocks}
    vision = dict(
        hidden_size=embed, num_hidden_layers=depth, num_attention_heads=embed // head_dim, patch_size=patch,
        image_size=grid * patch, global_attn_indexes=global_blocks, window_size=windows.pop() if windows else 14,
        output_channels=sd[prefix + "neck.0.weight"].shape[0],
        mlp_dim=sd[prefix + "blocks.0.mlp.lin1.weight"].shape[0],
    )  # fmt: skip
    downsample = [sd[prefix + "net_2.weight"].shape[0], sd[prefix + "net_3.weight"].shape[0]]
    return vision, downsample


def _clip_config(sd: dict[str, torch.Tensor], prefix: str, num_heads: int | None) -> dict[str, Any]:
    p = prefix + "vision_model."
    patch_w = sd[p + "embeddings.patch_embedding.weight"]  # (hidden, 3, patch, patch)
    hidden, patch = patch_w.shape[0], patch_w.shape[-1]
    grid = int(round((sd[p + "embeddings.position_embedding.weight"].shape[0] - 1) ** 0.5))
    layers = _count_numbered(sd, re.escape(p) + r"encoder\.layers\.(\d+)\.")
    # Head count is not in the weights: CLIP ViTs use 64-dim heads (L/14: 1024/64 = 16).
    return dict(
        model_type="clip_vision_model", hidden_size=hidden, patch_size=patch, image_size=grid * patch,
        num_hidden_layers=layers, num_attention_heads=num_heads or hidden // 64,
        intermediate_size=sd[p + "encoder.layers.0.mlp.fc1.weight"].shape[0], hidden_act="quick_gelu",
    )  # fmt: skip


def _opt_text_config(cfg: dict[str, Any], sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    keep = ("hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim", "word_embed_proj_dim",
            "do_layer_norm_before", "activation_function", "enable_bias", "layer_norm_elementwise_affine",
            "_remove_final_layer_norm", "pad_token_id", "bos_token_id", "eos_token_id", "init_std")  # fmt: skip
    text = {k: cfg[k] for k in keep if k in cfg}
    embed = sd["model.decoder.embed_tokens.weight"]
    # The official code never interpolated positions: the rows tell (2050 = stock OPT-125M, 4098 = extended).
    text |= dict(model_type="opt", vocab_size=embed.shape[0], dropout=0.0, attention_dropout=0.0,
                 max_position_embeddings=sd["model.decoder.embed_positions.weight"].shape[0] - 2)  # fmt: skip
    head = sd.get("lm_head.weight")
    # Tied if the head is absent (save_pretrained drops tied copies) or equal; meta tensors (shape-only
    # builds) count as untied so every key keeps its place.
    text["tie_word_embeddings"] = head is None or (head.device.type != "meta" and torch.equal(head, embed))
    return text


def qwen_text_config(cfg: dict[str, Any], sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    hidden = sd["transformer.wte.weight"].shape[1]
    heads = cfg.get("num_attention_heads") or hidden // cfg.get("kv_channels", 128)
    layers = _count_numbered(sd, r"transformer\.h\.(\d+)\.")
    if cfg.get("rotary_pct", 1.0) != 1.0:
        raise CheckpointError("QWen checkpoints with rotary_pct != 1 have no Qwen2 equivalent")
    return dict(
        model_type="qwen2", hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, head_dim=cfg.get("kv_channels", hidden // heads),
        intermediate_size=sd["transformer.h.0.mlp.w1.weight"].shape[0], vocab_size=sd["transformer.wte.weight"].shape[0],
        max_position_embeddings=cfg.get("max_position_embeddings", 8192), rms_norm_eps=cfg.get("layer_norm_epsilon", 1e-6),
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.get("rotary_emb_base", 10000))},
        tie_word_embeddings=False, use_sliding_window=False, attention_dropout=0.0,
        bos_token_id=151643, eos_token_id=151643, pad_token_id=151643,
    )  # fmt: skip


def got_text_config(cfg: dict[str, Any], sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """GOT's decoder is a stock Qwen2: widths from the weights, the rest (heads, rope, eps, tying) from config.json."""
    embed = sd["model.embed_tokens.weight"]  # (vocab, hidden)
    vocab, hidden = embed.shape
    if "num_attention_heads" not in cfg:
        raise CheckpointError("config.json has no num_attention_heads: the head count is not in the weights")
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or hidden // heads
    kv_heads = sd["model.layers.0.self_attn.k_proj.weight"].shape[0] // head_dim
    tied = cfg.get("tie_word_embeddings", "lm_head.weight" not in sd)
    rope_theta = float((cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 1000000.0)))
    return dict(
        model_type="qwen2", hidden_size=hidden, num_hidden_layers=_count_numbered(sd, r"model\.layers\.(\d+)\."),
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        intermediate_size=sd["model.layers.0.mlp.gate_proj.weight"].shape[0], vocab_size=vocab,
        max_position_embeddings=cfg.get("max_position_embeddings", 32768), rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta}, hidden_act=cfg.get("hidden_act", "silu"),
        tie_word_embeddings=bool(tied), use_sliding_window=False, attention_dropout=0.0,
        bos_token_id=cfg.get("bos_token_id", 151643), eos_token_id=cfg.get("eos_token_id", 151643),
        pad_token_id=cfg.get("pad_token_id", 151643),
    )  # fmt: skip


def is_vary_toy(text_config: dict[str, Any]) -> bool:
    """Vary-toy's files are Vary-base's layout and config fields; only its decoder, QWen-1.8B (24 layers of
    2048), tells them apart, and it decides the preprocessing default (Vary-toy: CLIP's; Vary-base: ImageNet's)."""
    return text_config["hidden_size"] == 2048 and text_config["num_hidden_layers"] == 24


def official_config(cfg: dict[str, Any], sd: dict[str, torch.Tensor], source: str = "", **overrides: Any) -> VaryConfig:
    """Our VaryConfig for an official config.json + its weights. `overrides` set preprocessing, template, clip heads."""
    try:
        return _official_config(cfg, sd, source, **overrides)
    except KeyError as err:  # a weight (or config.json field) the sizes are read from is absent
        raise CheckpointError(
            f"{source}: {err} is missing (weights or config.json): the checkpoint is incomplete"
        ) from err


def _official_config(cfg: dict[str, Any], sd: dict[str, torch.Tensor], source: str, **overrides: Any) -> VaryConfig:
    family = official_family(cfg)
    if family is None:
        raise CheckpointError(
            f"{source}/config.json: not an official Vary checkpoint (architectures {cfg.get('architectures')})"
        )
    sam_prefix = next((p for p in SAM_PREFIXES if p + "pos_embed" in sd), None)
    if sam_prefix is None:
        raise CheckpointError(f"{source}: no vision vocabulary weights (looked for {', '.join(SAM_PREFIXES)}*)")
    vision, downsample = _sam_config(sd, sam_prefix)
    fields: dict[str, Any] = dict(vision_config=vision, downsample_channels=downsample,
                                  image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, image_resample="bilinear",
                                  vision_select_layer=cfg.get("vision_select_layer", -2))  # fmt: skip
    clip_heads = overrides.pop("clip_num_attention_heads", None)
    if family == "opt":
        fields |= dict(text_config=_opt_text_config(cfg, sd), template="plain",
                       image_token_len=cfg.get("image_token_len", 256), image_start_token_id=cfg["im_start_token"],
                       image_end_token_id=cfg["im_end_token"], image_patch_token_id=cfg["im_patch_token"])  # fmt: skip
    elif family == "got":
        # GOT's eval processor: bicubic resize to the square input, CLIP mean/std (not Vary-base's ImageNet).
        fields |= dict(text_config=got_text_config(cfg, sd), template="mpt", prompt_style="got", image_mean=CLIP_MEAN, image_std=CLIP_STD,
                       image_resample="bicubic", image_token_len=cfg.get("image_token_len", 256),
                       image_start_token_id=cfg.get("im_start_token", QWEN_IMAGE_TOKENS["image_start_token_id"]),
                       image_end_token_id=cfg.get("im_end_token", QWEN_IMAGE_TOKENS["image_end_token_id"]),
                       image_patch_token_id=cfg.get("im_patch_token", QWEN_IMAGE_TOKENS["image_patch_token_id"]))  # fmt: skip
    else:
        text = qwen_text_config(cfg, sd)
        fields |= dict(text_config=text, template="mpt",
                       image_token_len=cfg.get("image_token_len", 256), **QWEN_IMAGE_TOKENS)  # fmt: skip
        if is_vary_toy(text):
            # Vary-toy's demo feeds the high-res branch through BlipImageEvalProcessor (bicubic, CLIP mean/std).
            fields |= dict(image_mean=CLIP_MEAN, image_std=CLIP_STD, image_resample="bicubic")
        if "transformer.vision_tower.vision_model.embeddings.class_embedding" in sd:
            fields["clip_config"] = _clip_config(sd, "transformer.vision_tower.", clip_heads)
    fields |= overrides
    return VaryConfig(**fields)


# --- key mapping -----------------------------------------------------------------------------------------
_SAM_RULES = [
    (r"patch_embed\.proj\.", "encoder.patch_embed.projection."),
    (r"pos_embed$", "encoder.pos_embed"),
    (r"blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"blocks\.(\d+)\.attn\.", r"encoder.layers.\1.attn."),
    (r"blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"neck\.0\.", "encoder.neck.conv1."),
    (r"neck\.1\.", "encoder.neck.layer_norm1."),
    (r"neck\.2\.", "encoder.neck.conv2."),
    (r"neck\.3\.", "encoder.neck.layer_norm2."),
    (r"(net_[23]\.)", r"\1"),
]
_QWEN_RULES = [
    (r"transformer\.wte\.", "language_model.model.embed_tokens."),
    (r"transformer\.ln_f\.", "language_model.model.norm."),
    (r"transformer\.h\.(\d+)\.ln_1\.", r"language_model.model.layers.\1.input_layernorm."),
    (r"transformer\.h\.(\d+)\.ln_2\.", r"language_model.model.layers.\1.post_attention_layernorm."),
    (r"transformer\.h\.(\d+)\.attn\.c_proj\.", r"language_model.model.layers.\1.self_attn.o_proj."),
    (r"transformer\.h\.(\d+)\.mlp\.w1\.", r"language_model.model.layers.\1.mlp.up_proj."),
    (r"transformer\.h\.(\d+)\.mlp\.w2\.", r"language_model.model.layers.\1.mlp.gate_proj."),
    (r"transformer\.h\.(\d+)\.mlp\.c_proj\.", r"language_model.model.layers.\1.mlp.down_proj."),
    (r"transformer\.vision_tower\.vision_model\.", "clip."),  # transformers 5 CLIPVisionModel has no wrapper
    (r"transformer\.mm_projector_vary\.", "projector_vary."),
    (r"transformer\.mm_projector\.", "projector_clip."),
    (r"lm_head\.", "language_model.lm_head."),
]
_GOT_RULES = [
    (r"model\.mm_projector_vary\.", "projector_vary."),
    (r"model\.(embed_tokens|layers|norm)\.", r"language_model.model.\1."),
    (r"lm_head\.", "language_model.lm_head."),
]
_OPT_RULES = [
    (r"model\.decoder\.", "language_model.model.decoder."),
    (r"model\.mm_projector\.", "projector_vary."),
    (r"lm_head\.", "language_model.lm_head."),
]


def _apply_rules(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, repl in rules:
        new, n = re.subn("^" + pattern, repl, key)
        if n:
            return new
    return None


def convert_keys(keys: Iterable[str], family: str) -> dict[str, tuple[str, int | None]]:
    """Official keys -> ours, as {our key: (official key, part)}: part i of 3 where one official matrix holds
    q, k and v (QWen v1's c_attn), else None. Raises CheckpointError naming any key it cannot place."""
    out: dict[str, tuple[str, int | None]] = {}
    unknown = []
    for key in keys:
        sam_prefix = next((p for p in SAM_PREFIXES if key.startswith(p)), None)
        if sam_prefix is not None:
            new = _apply_rules(key[len(sam_prefix) :], _SAM_RULES)
            new = None if new is None else "vision_vocab." + new
        elif family == "qwen" and (fused := re.match(r"transformer\.h\.(\d+)\.attn\.c_attn\.(weight|bias)$", key)):
            layer, kind = fused.groups()
            for part, name in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"language_model.model.layers.{layer}.self_attn.{name}.{kind}"] = (key, part)
            continue
        elif key.endswith("rotary_emb.inv_freq") or key.endswith("position_ids") or key.endswith(".masked_bias"):
            continue  # buffers recomputed by the model
        else:
            new = _apply_rules(key, {"qwen": _QWEN_RULES, "got": _GOT_RULES, "opt": _OPT_RULES}[family])
        if new is None:
            unknown.append(key)
        else:
            out[new] = (key, None)
    if unknown:
        raise CheckpointError(f"official checkpoint has {len(unknown)} key(s) with no place in Vary: {unknown[:5]}")
    return out


def take_part(tensor: torch.Tensor, part: int | None) -> torch.Tensor:
    """`part` of a fused (3H, ...) q/k/v tensor (see convert_keys), or the tensor itself."""
    return tensor if part is None else tensor.chunk(3, dim=0)[part].contiguous()


def convert_state_dict(sd: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """Official state dict -> ours (see convert_keys)."""
    return {new: take_part(sd[key], part) for new, (key, part) in convert_keys(sd, family).items()}


def load_official(folder: str | Path, dtype: torch.dtype = torch.float32, **overrides: Any):
    """Load an official Vary checkpoint folder as a VaryForCausalLM (weights cast to `dtype`)."""
    from vary.modeling.vary import VaryForCausalLM

    folder = Path(folder)
    cfg = read_config(folder)
    sd = load_state_dict(folder)
    config = official_config(cfg, sd, source=str(folder), **overrides)
    converted = convert_state_dict(sd, official_family(cfg))
    with torch.device("meta"):
        model = VaryForCausalLM(config)
    model = model.to_empty(device="cpu")
    assign_weights(model, converted, source=str(folder), dtype=dtype)
    return model.eval()


def assign_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, dtype: torch.dtype) -> None:
    """Load `state` strictly: every parameter set, every key used, shapes equal; errors name the key."""
    expected = model.state_dict()
    tied = model.config.tie_word_embeddings
    if tied:
        state = {k: v for k, v in state.items() if k != "language_model.lm_head.weight"}
    missing = [k for k in expected if k not in state and not (tied and k == "language_model.lm_head.weight")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{source}: missing weights {missing[:5]}, unexpected weights {unexpected[:5]}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{source}: weight {key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}"
            )
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    _reset_buffers(model)
    if tied:
        model.language_model.tie_weights()
    model.to(dtype)


def _reset_buffers(model: torch.nn.Module) -> None:
    """Buffers (position ids, rotary frequencies) are garbage after a meta-device build: recompute them.

    Any other buffer would be left uninitialised, so it is an error rather than a silent wrong answer.
    """
    for name, module in model.named_modules():
        own = dict(module.named_buffers(recurse=False))
        if not own:
            continue
        if "inv_freq" in own:  # rotary embedding: cheap to rebuild from its config
            fresh = type(module)(module.config)
            for key in own:
                getattr(module, key).copy_(getattr(fresh, key))
        elif set(own) == {"position_ids"}:
            module.position_ids.copy_(torch.arange(module.position_ids.shape[-1]).expand_as(module.position_ids))
        else:
            raise RuntimeError(f"don't know how to initialise buffers {sorted(own)} of {name}")
