"""Paths shared by tests (importable helper, not a test module)."""

import os
from pathlib import Path

CONFORMANCE_DIR = Path(
    os.environ.get("VARY_CONFORMANCE_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "conformance")
)
