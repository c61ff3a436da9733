"""`vary` command line. Thin: every command is a few lines over a library function.

Sub-command groups live beside the stage they drive (vary/data/cli.py, vary/train/cli.py, ...)
and are registered here.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Vary: document OCR, chart parsing and document VQA with a scaled-up vision vocabulary.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _main() -> None:
    """Vary command line."""


# --- sub-command registrations (one line per stage) ---
