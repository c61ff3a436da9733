"""Files shipped inside the package: the bundled model in vary/assets/model (what `vary ocr` reads with when no
--model is given). Its card: vary/assets/model/MODEL_CARD.md; its recipe: configs/reader.yaml; its results:
reports/training/reader/README.md.
"""

from __future__ import annotations

from pathlib import Path

MODEL_DIR = Path(__file__).parent / "model"


def bundled_model_dir() -> Path | None:
    """The model shipped inside the package, when this install has one (config.json + weights)."""
    return MODEL_DIR if (MODEL_DIR / "config.json").is_file() else None


def bundled_model_name(path: str | Path) -> str | None:
    """The bundled model's name (the first heading of its MODEL_CARD.md) when `path` is its folder, else None."""
    if bundled_model_dir() is None or Path(path).resolve() != MODEL_DIR.resolve():
        return None
    card = MODEL_DIR / "MODEL_CARD.md"
    title = card.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip() if card.is_file() else ""
    return title.split()[0].rstrip(":") if title else "model"
