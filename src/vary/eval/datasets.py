"""Evaluation sets read from local paths, in their public formats, as a stream of `EvalRecord`s.

Formats (`detect_format` picks one; `load_dataset(path, format=...)` forces it):
  shards   our WebDataset tar shards (a .tar file, or a folder holding .tar files): `{key}.png|jpg` +
           `{key}.json` with target, task, lang, kind; subset = "{kind}-{lang}"
  docvqa   DocVQA's JSON: {"data": [{"questionId", "question", "answers", "image"}, ...]}
  chartqa  ChartQA's JSON: [{"imgname", "query", "label"}, ...]; images in `png/` beside the JSON
  folder   a folder of images, each with ground truth in `{stem}.md` (task markdown) or `{stem}.txt` (ocr);
           subset = the image's sub-folder (or the folder's own name)

Problems with one sample (no ground truth, no image for a ground-truth file, an image path that does not
exist, a corrupt shard member) do not stop the stream: the record carries `error` and the runner reports
it. A path in no known format raises `UnknownDatasetFormat`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vary.chart_answer import parse_chart_answer

FORMATS = ("shards", "docvqa", "chartqa", "folder")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# Which metric family scores a task's output (vary.eval.metrics.score); anything else is page OCR.
TASK_METRIC = {
    "markdown": "markdown",
    "table_markdown": "markdown",
    "ask": "anls",
    "natural": "nature",
    "chart": "chart",
}


class UnknownDatasetFormat(ValueError):
    """The path is not in any format this module reads."""


@dataclass
class EvalRecord:
    """One thing to predict and its ground truth: EvalRecord(id, image, reference, task, question, subset).

    `image` is a path (opened lazily, so a bad file is reported when it is used) or a PIL image.
    """

    id: str
    image: str | Path | Image.Image | None
    reference: str | list[str] | None  # None only together with `error`
    task: str  # what the predictor is asked: ocr, markdown, chart, ask, ...
    question: str | None = None
    subset: str = "all"
    metric: str = ""  # page | markdown | anls | relaxed | nature | chart; "" -> from the task (TASK_METRIC)
    error: str | None = None  # a data problem found while reading; the sample is reported, not scored
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metric = self.metric or TASK_METRIC.get(self.task, "page")
        if isinstance(self.image, str):
            self.image = Path(self.image)
        if self.metric == "chart" and self.error is None and self.reference is not None:
            reference = self.reference if isinstance(self.reference, str) else self.reference[0]
            try:  # a reference chart_scores cannot read is a data error, found here, not a crash mid-run
                parse_chart_answer(reference)
            except ValueError as e:
                self.error = f"reference is not a chart answer: {e}"

    @property
    def image_path(self) -> Path | None:
        return self.image if isinstance(self.image, Path) else None

    def load_image(self) -> Image.Image:
        """The RGB image; raises (OSError, FileNotFoundError, ...) if it cannot be read."""
        if self.image is None:
            raise ValueError(f"record {self.id!r} has no image")
        if isinstance(self.image, Image.Image):
            return self.image.convert("RGB")
        with Image.open(self.image) as im:
            return im.convert("RGB")


# --- format detection --------------------------------------------------------------------------------
def detect_format(path: str | Path) -> str:
    """Name of the format of `path` (one of FORMATS); raises UnknownDatasetFormat otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no dataset at {path}")
    if path.is_dir():
        if any(p.suffix == ".tar" for p in path.rglob("*.tar")):
            return "shards"
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*")):
            return "folder"
        raise UnknownDatasetFormat(
            f"{path}: a folder with neither .tar shards nor images ({', '.join(IMAGE_SUFFIXES)})"
        )
    if path.suffix == ".tar":
        return "shards"
    if path.suffix == ".json":
        return _detect_json(path, _read_json(path))
    raise UnknownDatasetFormat(
        f"{path}: unknown dataset format (expected a folder of images or shards, a .tar shard, "
        "or a DocVQA / ChartQA .json file)"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnknownDatasetFormat(f"{path}: not valid JSON ({e})") from e


def _detect_json(path: Path, data: Any) -> str:
    items = data.get("data") if isinstance(data, dict) else data
    first = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}
    if {"questionId", "question", "image"} <= first.keys():
        return "docvqa"
    if {"imgname", "query", "label"} <= first.keys():
        return "chartqa"
    raise UnknownDatasetFormat(
        f"{path}: JSON is neither DocVQA (entries with questionId, question, image[, answers]) "
        f"nor ChartQA (entries with imgname, query, label); first entry has keys {sorted(first)}"
    )


def load_dataset(path: str | Path, format: str = "auto", limit: int | None = None) -> Iterator[EvalRecord]:
    """Records of the dataset at `path` (at most `limit`), format detected unless given."""
    path = Path(path)
    fmt = detect_format(path) if format == "auto" else format
    readers = {"shards": read_shards, "docvqa": read_docvqa, "chartqa": read_chartqa, "folder": read_folder}
    if fmt not in readers:
        raise UnknownDatasetFormat(f"unknown dataset format {fmt!r}; choose auto or one of {FORMATS}")
    for i, record in enumerate(readers[fmt](path)):
        if limit is not None and i >= limit:
            return
        yield record


# --- readers -----------------------------------------------------------------------------------------
def read_shards(path: Path) -> Iterator[EvalRecord]:
    """Our shards, through the data engine's reader; a corrupt member becomes an error record."""
    from vary.data.shards import ReadStats, decode_record, iter_records, list_shards

    for shard in list_shards(path):
        stats = ReadStats()
        shard_subset = shard.stem.rsplit("-", 1)[0]  # pages-en-00003.tar -> pages-en
        for key, files in iter_records(shard, stats):
            try:
                sample = decode_record(key, files)
            except ValueError as e:
                yield EvalRecord(key, None, None, "ocr", subset=shard_subset, error=f"{shard.name}: {e}")
                continue
            yield EvalRecord(
                id=key,
                reference=sample.target,
                task=sample.task,
                subset=f"{sample.kind}-{sample.lang}",
                image=sample.image,
                meta={"lang": sample.lang, "kind": sample.kind, "shard": shard.name},
            )
        for problem in stats.errors:  # the tar itself was unreadable part-way
            yield EvalRecord(f"{shard.name}:unreadable", None, None, "ocr", subset=shard_subset, error=problem)


def _find_image(name: str, roots: list[Path]) -> Path | None:
    """The first existing `root/name` or `root/basename(name)`."""
    for root in roots:
        for candidate in (root / name, root / Path(name).name):
            if candidate.is_file():
                return candidate
    return None


def read_docvqa(path: Path) -> Iterator[EvalRecord]:
    """DocVQA (SP-DocVQA) JSON; images looked up beside the JSON, in documents/, or ../spdocvqa_images."""
    data = _read_json(path)
    items = data["data"] if isinstance(data, dict) else data
    roots = [path.parent, path.parent / "documents", path.parent.parent / "spdocvqa_images", path.parent.parent]
    for item in items:
        qid = str(item.get("questionId", "?"))
        image = _find_image(str(item.get("image", "")), roots)
        answers = item.get("answers")
        error = None
        if not answers:
            error = f"{path.name}: question {qid} has no 'answers' (a test split without ground truth?)"
        elif image is None:
            error = f"{path.name}: image {item.get('image')!r} of question {qid} not found under {path.parent}"
        yield EvalRecord(
            id=qid, reference=answers, task="ask", question=item.get("question"), subset="docvqa",
            image=image, metric="anls", error=error,
        )  # fmt: skip


def read_chartqa(path: Path) -> Iterator[EvalRecord]:
    """ChartQA JSON (test_human.json / test_augmented.json); images in png/ beside it."""
    items = _read_json(path)
    roots = [path.parent / "png", path.parent, path.parent.parent / "png"]
    for i, item in enumerate(items):
        image = _find_image(str(item.get("imgname", "")), roots)
        label = item.get("label")
        error = None
        if label is None or label == "":
            error = f"{path.name}: entry {i} has no 'label'"
        elif image is None:
            error = f"{path.name}: image {item.get('imgname')!r} of entry {i} not found in {path.parent / 'png'}"
        yield EvalRecord(
            id=f"{Path(str(item.get('imgname', i))).stem}-{i}", reference=None if label is None else str(label),
            task="ask", question=item.get("query"), subset=f"chartqa-{path.stem}", image=image,
            metric="relaxed", error=error,
        )  # fmt: skip


def read_folder(path: Path) -> Iterator[EvalRecord]:
    """Images with `{stem}.md` or `{stem}.txt` ground truth beside them; mismatches become error records."""
    images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    truths = sorted(p for p in path.rglob("*") if p.suffix in (".md", ".txt") and p.is_file())
    stems_with_image = {p.with_suffix("") for p in images}

    def subset_of(p: Path) -> str:
        return p.parent.name if p.parent != path else path.name

    def record_id(p: Path) -> str:
        return p.relative_to(path).with_suffix("").as_posix()

    for image in images:
        md, txt = image.with_suffix(".md"), image.with_suffix(".txt")
        truth = md if md.is_file() else txt if txt.is_file() else None
        yield EvalRecord(
            id=record_id(image),
            reference=None if truth is None else truth.read_text(encoding="utf-8"),
            task="markdown" if truth == md else "ocr",
            subset=subset_of(image),
            image=image,
            error=None if truth is not None else f"no ground truth for {image.name} ({md.name} or {txt.name})",
        )
    for truth in truths:
        if truth.with_suffix("") not in stems_with_image:
            yield EvalRecord(
                id=record_id(truth), image=None, reference=None, task="ocr", subset=subset_of(truth),
                error=f"ground truth {truth.name} has no image with the same name",
            )  # fmt: skip
