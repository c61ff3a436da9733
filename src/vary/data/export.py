"""Shards -> the official Vary/LLaVA conversation JSON (for other trainers), and dataset statistics.

The JSON is a list of
    {"id": key, "image": "images/{key}.png",
     "conversations": [{"from": "human", "value": "<image>\\n" + prompt}, {"from": "gpt", "value": target}]}
as read by the official Vary and LLaVA data loaders. Images are copied byte for byte from the shards.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vary.data.engine import MANIFEST, PARTS, rebuild_manifest, sha256_file
from vary.data.shards import IMAGE_EXTS, ReadStats, iter_records, iter_shard, list_shards, prompt_for


@dataclass
class ExportResult:
    json_path: Path
    samples: int
    corrupt: int


def export_llava(data: str | Path, out: str | Path, name: str = "data.json") -> ExportResult:
    """Write `out/images/*` and `out/{name}` from every shard under `data`; corrupt members are skipped."""
    shards = list_shards(data)
    if not shards:
        raise FileNotFoundError(f"no .tar shards under {data}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    stats, entries = ReadStats(), []
    for shard in shards:
        for key, files in iter_records(shard, stats):
            try:
                record, ext = _check_record(files)
            except ValueError as e:
                stats.bad(f"{shard}:{key}", str(e))
                continue
            image_rel = f"images/{key}.{ext}"
            (out / image_rel).write_bytes(files[ext])
            prompt = record.get("prompt") or prompt_for(record["task"], record["lang"])
            entries.append(
                {
                    "id": key,
                    "image": image_rel,
                    "conversations": [
                        {"from": "human", "value": f"<image>\n{prompt}"},
                        {"from": "gpt", "value": record["target"]},
                    ],
                }
            )
    json_path = out / name
    tmp = json_path.with_name(f".{name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(entries, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, json_path)
    return ExportResult(json_path, len(entries), stats.corrupt)


def _check_record(files: dict[str, bytes]) -> tuple[dict, str]:
    """(parsed json, image extension) of a record whose image is intact (PNG CRCs / JPEG structure)."""
    ext = next((e for e in IMAGE_EXTS if e in files), None)
    if ext is None or "json" not in files:
        raise ValueError("record lacks its image or its .json")
    try:
        record = json.loads(files["json"].decode("utf-8"))
        Image.open(io.BytesIO(files[ext])).verify()
    except Exception as e:  # any decoder error means a corrupt member
        raise ValueError(f"{type(e).__name__}: {e}") from e
    if "target" not in record or "task" not in record:
        raise ValueError("json lacks target/task")
    return record, ext


def dataset_stats(data: str | Path, verify: bool = False) -> dict:
    """Summary of a `vary data generate` folder; with verify, sha256 and decode every shard."""
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"no data folder at {data}")
    if (data / PARTS).is_dir():
        rebuild_manifest(data)  # merge what concurrent array jobs wrote
    if not (data / MANIFEST).is_file():
        raise FileNotFoundError(f"{data} has no {MANIFEST} (not made by `vary data generate`)")
    manifest = json.loads((data / MANIFEST).read_text(encoding="utf-8"))
    per_series: dict[str, dict] = {}
    shards_by_series = Counter(sh["series"] for sh in manifest["shards"])
    samples_by_series = Counter()
    for sh in manifest["shards"]:
        samples_by_series[sh["series"]] += sh["samples"]
    skipped_samples = Counter(x["shard"].rsplit("-", 1)[0] for x in manifest["skipped_samples"])
    for name, info in manifest["series"].items():
        per_series[name] = {
            "samples": samples_by_series[name],
            "shards": shards_by_series[name],
            "num_shards": info["num_shards"],
            "complete": info["complete"],
            "skipped_inputs": len(info["skipped_inputs"]),
            "skipped_samples": skipped_samples[name],
        }
    stats = {
        "total_samples": manifest["total_samples"],
        "shards": len(manifest["shards"]),
        "counts": manifest["counts"],
        "series": per_series,
    }
    if verify:
        bad, read = [], ReadStats()
        for sh in manifest["shards"]:
            path = data / sh["name"]
            if sha256_file(path) != sh["sha256"]:
                bad.append(f"{sh['name']}: sha256 differs from the manifest")
            n = sum(1 for _ in iter_shard(path, read))
            if n != sh["samples"]:
                bad.append(f"{sh['name']}: {n} readable samples, manifest says {sh['samples']}")
        stats["verify"] = {"bad_shards": len(bad), "corrupt": read.corrupt, "errors": bad + read.errors}
    return stats
