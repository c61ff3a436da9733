"""vary: an open reimplementation of Vary (Wei et al., 2023, arXiv 2312.06109).

import vary
model, processor = vary.load("path/to/model")          # ours or an official checkpoint folder
config = vary.preset("nano"); model = vary.VaryForCausalLM(config)
"""

__version__ = "0.1.0"

from vary.config import PRESETS, VaryConfig, preset  # noqa: E402
from vary.modeling.loading import convert, load, load_model  # noqa: E402
from vary.modeling.processor import VaryProcessor  # noqa: E402
from vary.modeling.vary import VaryForCausalLM  # noqa: E402

__all__ = ["PRESETS", "VaryConfig", "VaryForCausalLM", "VaryProcessor", "convert", "load", "load_model", "preset"]
