"""Files shipped inside the package: the bundled nano-ocr model (vary/assets/model, see MODEL_CARD.md)."""

from __future__ import annotations

from pathlib import Path

MODEL_DIR = Path(__file__).parent / "model"


def bundled_model_dir() -> Path | None:
    """The model shipped inside the package, when this install has one (config.json + weights)."""
    return MODEL_DIR if (MODEL_DIR / "config.json").is_file() else None
