"""Run a task over whole documents: every page of every input, a file per page or stdout, a progress bar.

`vary ocr` is a thin command over `ocr_documents`; tests and benchmarks call it directly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vary.infer.tasks import EXTENSIONS


def output_names(pages, ext: str) -> list[str]:
    """`stem.ext` for images, `stem-p0003.ext` for PDF pages; a numeric suffix keeps names from clashing."""
    names, seen = [], set()
    for page in pages:
        stem = Path(page.document.name).stem or "upload"
        base = stem if page.number is None else f"{stem}-p{page.number:04d}"
        name, n = base + ext, 1
        while name in seen:
            n += 1
            name = f"{base}-{n}{ext}"
        seen.add(name)
        names.append(name)
    return names


def ocr_documents(
    pipeline,
    documents: list,
    task: str = "ocr",
    question: str | None = None,
    out: Path | None = None,
    batch_size: int = 4,
    progress: bool = True,
    errors: list | None = None,
    **overrides,
) -> list[dict]:
    """Run `task` on every page of the documents (documents.open_documents); a file per page in `out`, or stdout.

    With `errors` (a list), a page that cannot be decoded is reported there as (page, error) and the run goes on."""
    from tqdm import tqdm

    from vary.infer.pipeline import page_record

    all_pages = [page for doc in documents for page in doc]
    names = output_names(all_pages, EXTENSIONS[task])
    names = {(id(p.document), p.number): name for p, name in zip(all_pages, names, strict=True)}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    records = []
    bar = tqdm(total=len(all_pages), unit="page", disable=not progress or len(all_pages) < 2, file=sys.stderr)
    reported = len(errors or [])

    def report_errors() -> None:  # pages run_pages skipped since the last call
        nonlocal reported
        for _, err in (errors or [])[reported:]:
            tqdm.write(f"error: {err}", file=sys.stderr)
            bar.update(1)
        reported = len(errors or [])

    for page, result in pipeline.run_pages(
        all_pages, task, question, batch_size=batch_size, errors=errors, **overrides
    ):
        report_errors()
        name = names[(id(page.document), page.number)]
        record = page_record(page, result, task)
        text = json.dumps(record, ensure_ascii=False, indent=2) if task == "chart" else result.text
        if out is not None:
            (out / name).write_text(text + "\n", encoding="utf-8")
        else:
            header = f"==> {page.label} <==\n" if len(all_pages) > 1 else ""
            tqdm.write(header + text, file=sys.stdout)
        if result.truncated_by_loop_guard:
            tqdm.write(f"warning: {page.label}: stopped by the repetition-loop guard", file=sys.stderr)
        records.append(record)
        bar.update(1)
    report_errors()
    bar.close()
    return records
