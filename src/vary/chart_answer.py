"""Reading a chart answer back: `CHART_ANSWER_PREFIX` + a python-dict literal -> {'title': ..., 'data': ...}.

The charts data source writes these answers, inference parses model output with the same function and
evaluation scores with it; it lives apart from the charts source so that neither pulls in matplotlib.
"""

from __future__ import annotations

import ast

from vary.prompts import CHART_ANSWER_PREFIX

MAX_ANSWER_CHARS = 100_000  # longer inputs are refused: literal_eval's cost grows with them


def parse_chart_answer(text: str) -> dict:
    """Parse a chart answer (with or without CHART_ANSWER_PREFIX) into {'title': ..., 'data': ...}.

    Uses ast.literal_eval, never eval: model output is untrusted. Raises ValueError saying what is wrong.
    """
    if not isinstance(text, str):
        raise ValueError(f"chart answer must be a str, got {type(text).__name__}")
    body = text.strip()
    if body.startswith(CHART_ANSWER_PREFIX.strip()):
        body = body[len(CHART_ANSWER_PREFIX.strip()) :].strip()
    if len(body) > MAX_ANSWER_CHARS:
        raise ValueError(f"chart answer is too long ({len(body)} chars > {MAX_ANSWER_CHARS})")
    try:
        value = ast.literal_eval(body)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
        raise ValueError(
            f"chart answer is not a python-dict literal ({err.__class__.__name__}: {err}): {body[:80]!r}"
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"chart answer must be a dict, got {type(value).__name__}: {body[:80]!r}")
    missing = [k for k in ("title", "data") if k not in value]
    if missing:
        raise ValueError(f"chart answer dict lacks key(s) {missing}: {body[:80]!r}")
    if not isinstance(value["data"], dict):
        raise ValueError(f"chart answer 'data' must be a dict, got {type(value['data']).__name__}")
    return value
