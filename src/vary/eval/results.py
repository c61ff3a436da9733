"""The results of an evaluation run: every scored sample and the per-model, per-subset summary.

`results.json` holds `EvalRun.to_json()`; the runner makes runs, the report renders, merges and compares them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any


@dataclass
class EvalRun:
    """Everything a run produced; `to_json()` is what results.json holds."""

    meta: dict[str, Any]
    samples: list[dict[str, Any]]
    data_errors: list[dict[str, str]]

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        return summarize(self.samples, self.data_errors)

    def to_json(self) -> dict[str, Any]:
        return {"meta": self.meta, "summary": self.summary(), "data_errors": self.data_errors, "samples": self.samples}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalRun:
        missing = {"meta", "samples"} - set(data)
        if missing:
            raise ValueError(f"not a `vary eval run` results file: missing {sorted(missing)}")
        return cls(meta=data["meta"], samples=data["samples"], data_errors=data.get("data_errors", []))


def summarize(samples: list[dict[str, Any]], data_errors: list[dict[str, str]] = ()) -> dict:
    """{model: {subset: {"metric", "n", "errors", "unsupported", "data_errors", "seconds", <score means>}}}.

    A score key is averaged over the samples that have it (markdown parts exist only where either side
    has that part); `n` counts scored samples, prediction errors included (scored as empty).
    """
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for s in samples:
        groups[(s["model"], s["subset"])].append(s)
    bad_data = defaultdict(int)
    for e in data_errors:
        bad_data[e["subset"]] += 1
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for (model, subset), group in groups.items():  # first-seen order: models as given, subsets as read
        scored = [s for s in group if s["status"] != "unsupported"]
        sums: dict[str, list[float]] = defaultdict(list)
        for s in scored:
            for key, value in s["scores"].items():
                sums[key].append(value)
        times = [s["seconds"] for s in scored if s["seconds"] is not None]
        out[model][subset] = {
            "metric": group[0]["metric"],
            "n": len(scored),
            "errors": sum(s["status"] == "error" for s in group),
            "unsupported": len(group) - len(scored),
            "data_errors": bad_data.get(subset, 0),
            "seconds": sum(times) / len(times) if times else None,
            **({"langs": langs} if (langs := _count_langs(scored)) else {}),
            **{key: sum(values) / len(values) for key, values in sums.items()},
        }
    return dict(out)


def _count_langs(samples: list[dict[str, Any]]) -> dict[str, int]:
    """How many samples each OCR engine language read (baselines record the one they ran)."""
    counts: dict[str, int] = defaultdict(int)
    for s in samples:
        if s.get("lang"):
            counts[s["lang"]] += 1
    return dict(counts)
