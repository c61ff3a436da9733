"""vary: an open reimplementation of Vary (Wei et al., 2023, arXiv 2312.06109).

    import vary
    model, processor = vary.load("path/to/model")          # ours or an official checkpoint folder
    model, processor = vary.load("HaoranWei/Vary-toy")     # or a hub id org/name[@rev], or a `vary models` name
    config = vary.preset("nano"); model = vary.VaryForCausalLM(config)

Public names are imported lazily, so `vary data ...` and other torch-free paths start fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "PRESETS": "vary.config",
    "VaryConfig": "vary.config",
    "preset": "vary.config",
    "VaryForCausalLM": "vary.modeling.vary",
    "VaryProcessor": "vary.modeling.processor",
    "load": "vary.modeling.loading",
    "load_model": "vary.modeling.loading",
    "convert": "vary.modeling.loading",
    "Pipeline": "vary.infer.pipeline",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'vary' has no attribute {name!r}")
