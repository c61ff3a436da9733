"""Files shipped inside the package: a bundled model in vary/assets/model, once one ships.

Its recipe and status: reports/training/nano-ocr/README.md.
"""

from __future__ import annotations

from pathlib import Path

MODEL_DIR = Path(__file__).parent / "model"


def bundled_model_dir() -> Path | None:
    """The model shipped inside the package, when this install has one (config.json + weights)."""
    return MODEL_DIR if (MODEL_DIR / "config.json").is_file() else None
