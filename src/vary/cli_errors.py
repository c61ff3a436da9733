"""How every `vary` command ends on an error it expected: one red `error: ...` line on stderr, then an exit code.

Exit codes: 2 for bad input or usage (a file, folder, option or model that cannot be used), 1 for work that ran
and failed in part (some pages, some shards), 3 for running out of memory in training.
"""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(error: object, code: int = 2) -> NoReturn:
    """Print `error: <error>` and leave with `code`; no traceback (the message names what to fix)."""
    typer.secho(f"error: {error}", fg="red", err=True)
    raise typer.Exit(code)
