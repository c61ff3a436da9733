"""Score predictors on a dataset: every predictor sees exactly the same images, one record at a time.

Outcomes per (record, predictor), all kept in the results JSON:
  ok           predicted and scored
  error        the predictor raised: scored as an empty prediction (a crash must not flatter a model)
  unsupported  the predictor cannot do the task at all (an OCR engine asked a question): not scored, "n/a"
Data problems (no ground truth, unreadable image, duplicate id) are found once per record, listed under
`data_errors`, and the record is skipped for every predictor; the run goes on.
"""

from __future__ import annotations

import datetime as dt
import inspect
import os
import platform
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vary.eval.baselines import Predictor, UnsupportedTask, get_predictor
from vary.eval.datasets import EvalRecord, load_dataset
from vary.eval.metrics import meteor_mode, score
from vary.eval.report import write_outputs
from vary.eval.results import EvalRun


@dataclass
class SampleResult:
    id: str
    subset: str
    model: str
    task: str
    metric: str
    status: str  # ok | error | unsupported
    prediction: str | None
    reference: str | list[str]
    scores: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None
    error: str | None = None
    lang: str | None = None  # the language an OCR engine ran, when it says (baselines.Prediction)


def _takes_lang(predictor: Predictor) -> bool:
    return "lang" in inspect.signature(predictor.predict).parameters


def _unique_names(predictors: Sequence[Predictor]) -> list[str]:
    """Predictor names, suffixed #2, #3... when two share one (e.g. two checkpoints both called 'final')."""
    seen: dict[str, int] = defaultdict(int)
    names = []
    for p in predictors:
        seen[p.name] += 1
        names.append(p.name if seen[p.name] == 1 else f"{p.name}#{seen[p.name]}")
    return names


def evaluate(
    records: Iterable[EvalRecord],
    predictors: Sequence[Predictor],
    fox_compatible: bool = False,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
) -> EvalRun:
    """Run every predictor on every record and score it (see module docstring for the outcomes)."""
    records = list(records)
    names = _unique_names(predictors)
    samples: list[dict] = []
    data_errors: list[dict] = []
    seen_ids: set[tuple[str, str]] = set()
    bar = tqdm(total=len(records) * len(predictors), desc="eval", unit="pred", disable=not progress)
    for record in records:
        error = record.error
        if error is None and (record.subset, record.id) in seen_ids:
            error = f"duplicate id {record.id!r} in subset {record.subset!r}: only the first is scored"
        seen_ids.add((record.subset, record.id))
        image = None
        if error is None:
            try:
                image = record.load_image()
            except Exception as e:  # any decoder error: the file is not a readable image
                error = f"unreadable image {record.image_path or '<in memory>'}: {type(e).__name__}: {e}"
        if error is not None:
            data_errors.append({"id": record.id, "subset": record.subset, "error": error})
            bar.update(len(predictors))
            continue
        for name, predictor in zip(names, predictors, strict=True):
            bar.set_postfix_str(name, refresh=False)
            samples.append(asdict(_predict_one(record, image, predictor, name, fox_compatible)))
            bar.update(1)
    bar.close()
    run_meta = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "models": names,
        "fox_compatible": fox_compatible,
        "unicode_normalization": "NFKC",
        "meteor": meteor_mode(),
        "records": len(records),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        **(meta or {}),
    }
    return EvalRun(meta=run_meta, samples=samples, data_errors=data_errors)


def _predict_one(record: EvalRecord, image, predictor: Predictor, name: str, fox_compatible: bool) -> SampleResult:
    result = SampleResult(
        id=record.id, subset=record.subset, model=name, task=record.task, metric=record.metric,
        status="ok", prediction=None, reference=record.reference,
    )  # fmt: skip
    start = time.perf_counter()
    declared = {"lang": record.meta.get("lang")} if _takes_lang(predictor) and record.meta.get("lang") else {}
    try:
        prediction = predictor.predict(image, record.task, record.question, **declared)
        result.prediction, result.lang = str(prediction), getattr(prediction, "lang", None)
    except UnsupportedTask as e:
        result.status, result.error = "unsupported", str(e)
        return result
    except Exception as e:  # a crash on one sample must not end a long run
        result.status, result.error, result.prediction = "error", f"{type(e).__name__}: {e}", ""
    result.seconds = time.perf_counter() - start
    result.scores = score(record.metric, result.prediction, record.reference, fox_compatible)
    return result


def run_eval(
    data: str | Path,
    model_specs: Sequence[str],
    out_dir: str | Path,
    limit: int | None = None,
    fox_compatible: bool = False,
    dataset_format: str = "auto",
    progress: bool = True,
) -> tuple[EvalRun, dict[str, Path]]:
    """What `vary eval run` does: load the data and predictors, evaluate, write report/JSON/plot."""
    if not model_specs:
        raise ValueError("give at least one --model (tesseract, rapidocr or a model directory)")
    records = list(load_dataset(data, format=dataset_format, limit=limit))
    if not records:
        raise ValueError(f"{data}: the dataset has no records")
    predictors = [get_predictor(spec) for spec in model_specs]
    meta = {"dataset": str(data), "dataset_format": dataset_format, "model_specs": list(model_specs), "limit": limit}
    run = evaluate(records, predictors, fox_compatible=fox_compatible, progress=progress, meta=meta)
    return run, write_outputs(run, out_dir)
