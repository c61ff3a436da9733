"""Write our models' weights in the official key layouts (importable helper, not a test module).

The inverse of vary.modeling.official's rules, written out independently, so tests can make official-format
folders from tiny random models: GOT-OCR2 (GOTQwenForCausalLM) and Vary-toy (varyQwenForCausalLM, QWen v1).
"""

from __future__ import annotations

import re

import torch

SAM_TO_OFFICIAL = [
    (r"encoder\.patch_embed\.projection\.", "patch_embed.proj."),
    (r"encoder\.pos_embed", "pos_embed"),
    (r"encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"blocks.\1.norm\2."),
    (r"encoder\.layers\.(\d+)\.", r"blocks.\1."),
    (r"encoder\.neck\.conv1\.", "neck.0."),
    (r"encoder\.neck\.layer_norm1\.", "neck.1."),
    (r"encoder\.neck\.conv2\.", "neck.2."),
    (r"encoder\.neck\.layer_norm2\.", "neck.3."),
    (r"(net_[23])\.", r"\1."),
]
GOT_TO_OFFICIAL = [
    (r"projector_vary\.", "model.mm_projector_vary."),
    (r"language_model\.model\.", "model."),
    (r"language_model\.lm_head\.", "lm_head."),
]
QWEN_V1_TO_OFFICIAL = [
    (r"clip\.", "transformer.vision_tower.vision_model."),
    (r"projector_clip\.", "transformer.mm_projector."),
    (r"projector_vary\.", "transformer.mm_projector_vary."),
    (r"language_model\.model\.embed_tokens\.", "transformer.wte."),
    (r"language_model\.model\.norm\.", "transformer.ln_f."),
    (r"language_model\.model\.layers\.(\d+)\.input_layernorm\.", r"transformer.h.\1.ln_1."),
    (r"language_model\.model\.layers\.(\d+)\.post_attention_layernorm\.", r"transformer.h.\1.ln_2."),
    (r"language_model\.model\.layers\.(\d+)\.self_attn\.o_proj\.", r"transformer.h.\1.attn.c_proj."),
    (r"language_model\.model\.layers\.(\d+)\.mlp\.up_proj\.", r"transformer.h.\1.mlp.w1."),
    (r"language_model\.model\.layers\.(\d+)\.mlp\.gate_proj\.", r"transformer.h.\1.mlp.w2."),
    (r"language_model\.model\.layers\.(\d+)\.mlp\.down_proj\.", r"transformer.h.\1.mlp.c_proj."),
    (r"language_model\.lm_head\.", "lm_head."),
]


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, repl in rules:
        if re.match(pattern, key):
            return re.sub("^" + pattern, repl, key)
    raise KeyError(f"no official name for {key}")


def to_official(state: dict[str, torch.Tensor], family: str, drop_tied_head: bool = False) -> dict[str, torch.Tensor]:
    """Our state dict -> the official keys of `family` ("got" or "qwen"); QWen v1 fuses q/k/v into c_attn."""
    sam_prefix = {"got": "model.vision_tower_high.", "qwen": "transformer.vision_tower_high."}[family]
    rules = {"got": GOT_TO_OFFICIAL, "qwen": QWEN_V1_TO_OFFICIAL}[family]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if drop_tied_head and key == "language_model.lm_head.weight":
            continue  # save_pretrained leaves a tied head out
        if key.startswith("vision_vocab."):
            out[sam_prefix + _rename(key[len("vision_vocab.") :], SAM_TO_OFFICIAL)] = tensor
        elif family == "qwen" and (
            m := re.match(r"language_model\.model\.layers\.(\d+)\.self_attn\.q_proj\.(\w+)", key)
        ):
            layer, kind = m.groups()
            parts = [state[f"language_model.model.layers.{layer}.self_attn.{n}_proj.{kind}"] for n in "qkv"]
            out[f"transformer.h.{layer}.attn.c_attn.{kind}"] = torch.cat(parts, dim=0)
        elif family == "qwen" and re.match(r"language_model\.model\.layers\.\d+\.self_attn\.[kv]_proj\.", key):
            continue  # fused above
        else:
            out[_rename(key, rules)] = tensor
    return {k: v.contiguous() for k, v in out.items()}
