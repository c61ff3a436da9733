"""Paths shared by tests (importable helper, not a test module)."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES_DIR = REPO / "tests" / "fixtures"
# Cases made by the official code (see ../shared/conformance/README.md); a clone without them skips those tests.
CONFORMANCE_DIR = Path(os.environ.get("VARY_CONFORMANCE_DIR", REPO.parent / "shared" / "conformance"))
# A copy of Qwen's tiktoken ranks (the file the PyPI package `dashscope` ships): GOT and QWen tokenizers.
QWEN_TIKTOKEN = FIXTURES_DIR / "qwen.tiktoken"


def conformance_cases(folder: Path) -> list[Path]:
    """Case folders (holding case.json) directly under `folder`; none if it does not exist."""
    return sorted(p for p in folder.glob("*") if (p / "case.json").is_file()) if folder.is_dir() else []
