"""The data engine: runs a generator over an index range with worker processes and writes shards + manifest.

Work is split into *series* (one per kind and language, e.g. pages-en) and each series into shards of
`shard_size` consecutive indices. Properties the rest of the project relies on:

- Deterministic: sample `i` of a series is made with `random.Random(f"{seed}:{kind}:{lang}:{i}")`, and
  samples are written in index order, so the same seed and arguments give byte-identical shards
  whatever the number of workers or the shard range.
- Safe and resumable: a shard is written to a hidden temporary file and renamed when complete, after
  its record in `DIR/.parts/` is written. A shard counts as done when both exist; a rerun makes only
  the missing ones. `--shard-range A:B` lets cluster array jobs share one output folder.
- Accountable: `manifest.json` is rebuilt from `.parts/` at the end of every run (also after a crash),
  with counts per kind/lang, arguments, package versions, skipped inputs with reasons, and every
  shard's sample count and sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vary.data.generators import get_generator_class
from vary.data.sample import Sample, SkipSample
from vary.data.shards import ShardWriter, encode_sample, remove_stale_temporaries, shard_name

MANIFEST = "manifest.json"
PARTS = ".parts"
LANG_CHOICES = ("en", "zh", "mix")
_VERSION_PACKAGES = ("vary", "pillow", "numpy", "pymupdf", "faker", "jieba", "matplotlib", "scikit-image")


class DataEngineError(RuntimeError):
    """A problem with the arguments or the inputs, reported before anything is written."""


@dataclass
class GenerateConfig:
    kind: str
    out: Path
    count: int | None = None  # samples per run (split over languages for --lang mix); None = all inputs
    lang: str = "en"
    seed: int = 0
    workers: int = 1
    shard_size: int = 1000
    shard_range: tuple[int | None, int | None] | None = None  # [A, B) over each series' shard numbers
    input_dir: Path | None = None
    size: int = 1024
    options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True


@dataclass
class GenerateReport:
    written_shards: list[str] = field(default_factory=list)
    existing_shards: list[str] = field(default_factory=list)
    samples: int = 0
    skipped: list[dict] = field(default_factory=list)  # inputs and samples skipped in this run
    manifest: Path | None = None


@dataclass
class _Series:
    """One kind+language stream of indices and the generator that fills it."""

    kind: str
    lang: str  # label used in shard names and keys: en, zh, or mix (generators that detect language)
    generator: Any
    identity: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.lang}"

    @property
    def num_shards(self) -> int:
        return math.ceil(len(self.generator) / self.identity["shard_size"])

    def shard_indices(self, shard: int) -> range:
        k = self.identity["shard_size"]
        return range(shard * k, min((shard + 1) * k, len(self.generator)))


# ---- public API ----------------------------------------------------------------------------------
def parse_shard_range(text: str | None) -> tuple[int | None, int | None] | None:
    """'A:B' -> (A, B) (either side may be empty); None -> None."""
    if not text:
        return None
    a, sep, b = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return (int(a) if a.strip() else None, int(b) if b.strip() else None)
    except ValueError:
        raise DataEngineError(f"--shard-range must look like A:B (e.g. 0:10), got {text!r}") from None


def generate(cfg: GenerateConfig) -> GenerateReport:
    """Make every missing shard of `cfg` (restricted to `cfg.shard_range`) and refresh the manifest."""
    series = _build_series(cfg)  # all argument and input errors surface here, before any write
    out = Path(cfg.out)
    parts = out / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    report = GenerateReport()
    for s in series:
        _check_or_record_series(parts, s)
        report.skipped.extend({"series": s.name, **x} for x in getattr(s.generator, "skipped", []))

    # Pending work: (series number, shard number) pairs, in order.
    todo: list[tuple[int, int]] = []
    for si, s in enumerate(series):
        lo, hi = cfg.shard_range or (None, None)
        for shard in range(max(lo or 0, 0), min(s.num_shards if hi is None else hi, s.num_shards)):
            name = shard_name(s.kind, s.lang, shard)
            if (out / name).exists() and (parts / f"{name}.json").exists():
                report.existing_shards.append(name)
            else:
                todo.append((si, shard))
    try:
        _run(cfg, series, todo, out, report)
    finally:
        report.manifest = rebuild_manifest(out)
    return report


def rebuild_manifest(out: Path) -> Path:
    """Write `out/manifest.json` from the records in `out/.parts` (only shards present on disk)."""
    out = Path(out)
    parts = out / PARTS
    series, shards = {}, []
    for p in sorted(parts.glob("*.series.json")):
        info = json.loads(p.read_text(encoding="utf-8"))
        series[info["name"]] = info
    for p in sorted(parts.glob("*.tar.json")):
        info = json.loads(p.read_text(encoding="utf-8"))
        if (out / info["name"]).exists():
            shards.append(info)
    counts: dict[str, Counter] = {}
    skipped_samples = []
    for sh in shards:
        counts.setdefault(sh["kind"], Counter()).update(sh["langs"])
        skipped_samples.extend({"shard": sh["name"], **x} for x in sh["skipped"])
    for info in series.values():
        present = sum(1 for sh in shards if sh["series"] == info["name"])
        info["complete"] = present == info["num_shards"]
    manifest = {
        "format": "vary-shards/1",
        "counts": {kind: dict(sorted(c.items())) for kind, c in sorted(counts.items())},
        "total_samples": sum(sh["samples"] for sh in shards),
        "series": series,
        "skipped_inputs": [{"series": n, **x} for n, info in series.items() for x in info["skipped_inputs"]],
        "skipped_samples": skipped_samples,
        "shards": shards,
    }
    _atomic_write_json(out / MANIFEST, manifest)
    return out / MANIFEST


def sample_rng(seed: int, kind: str, lang: str, index: int) -> random.Random:
    """The rng of one sample: a function of (seed, kind, lang, index) only (str seeds hash with sha512)."""
    return random.Random(f"{seed}:{kind}:{lang}:{index}")


def sample_key(kind: str, lang: str, index: int) -> str:
    return f"{kind}-{lang}-{index:08d}"


# ---- series set-up -------------------------------------------------------------------------------
def _build_series(cfg: GenerateConfig) -> list[_Series]:
    if cfg.lang not in LANG_CHOICES:
        raise DataEngineError(f"--lang must be one of {', '.join(LANG_CHOICES)}, got {cfg.lang!r}")
    if cfg.shard_size < 1 or cfg.workers < 1 or cfg.size < 32:
        raise DataEngineError("--shard-size and --workers must be >= 1 and --size >= 32")
    if cfg.count is not None and cfg.count < 0:
        raise DataEngineError(f"--count must be >= 0, got {cfg.count}")
    try:
        cls = get_generator_class(cfg.kind)
    except KeyError as e:
        raise DataEngineError(str(e.args[0])) from None
    if cfg.input_dir is not None and not Path(cfg.input_dir).is_dir():
        raise DataEngineError(f"input folder {cfg.input_dir} does not exist or is not a folder")
    langs = tuple(getattr(cls, "langs", ("en", "zh")))
    if cfg.lang == "mix" and "mix" not in langs:
        split = [lg for lg in langs if lg in ("en", "zh")]
        if cfg.count is None:
            plan = [(lg, None) for lg in split]
        else:  # first language gets the odd one
            plan = [(lg, cfg.count // len(split) + (i < cfg.count % len(split))) for i, lg in enumerate(split)]
    elif cfg.lang not in langs:
        raise DataEngineError(f"generator {cfg.kind!r} makes languages {', '.join(langs)}; got --lang {cfg.lang}")
    else:
        plan = [(cfg.lang, cfg.count)]

    series = []
    for lang, count in plan:
        kwargs = dict(count=count, lang=lang, size=cfg.size, **cfg.options)
        if cfg.input_dir is not None:
            kwargs["input_dir"] = Path(cfg.input_dir)
        try:
            generator = cls(**kwargs)
        except (FileNotFoundError, ValueError, TypeError, RuntimeError) as e:
            raise DataEngineError(f"{cfg.kind} ({lang}): {e}") from e
        identity = {
            "kind": cfg.kind,
            "lang": lang,
            "seed": cfg.seed,
            "count": count,
            "samples_planned": len(generator),
            "size": cfg.size,
            "shard_size": cfg.shard_size,
            "options": {k: cfg.options[k] for k in sorted(cfg.options)},
            "input_dir": str(Path(cfg.input_dir).resolve()) if cfg.input_dir is not None else None,
        }
        series.append(_Series(cfg.kind, lang, generator, identity))
    return series


def _check_or_record_series(parts: Path, s: _Series) -> None:
    """Refuse to mix shards made with other arguments into one series; record the arguments."""
    path = parts / f"{s.name}.series.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old["identity"] != s.identity:
            diff = {k: (old["identity"].get(k), v) for k, v in s.identity.items() if old["identity"].get(k) != v}
            raise DataEngineError(
                f"{parts.parent} already holds {s.name} shards made with other arguments "
                f"(old, new): {diff}. Use a new --out folder or the same arguments to resume."
            )
        return
    describe = getattr(s.generator, "describe", None)
    _atomic_write_json(
        path,
        {
            "name": s.name,
            "identity": s.identity,
            "num_shards": s.num_shards,
            "generator": describe() if describe else {},
            "skipped_inputs": list(getattr(s.generator, "skipped", [])),
            "versions": _versions(),
        },
    )


# ---- the run -------------------------------------------------------------------------------------
# Worker state, set once per process by _init_worker (inherited when forked, pickled when spawned).
_WORKER: dict[str, Any] = {}


def _init_worker(generators: list[Any], seed: int, formats: list[str]) -> None:
    _WORKER.update(generators=generators, seed=seed, formats=formats)


def _make_one(task: tuple[int, str, str, int]) -> tuple[str, Any]:
    """Make and encode one sample: ("ok", members) or ("skip", reason)."""
    si, kind, lang, index = task
    generator = _WORKER["generators"][si]
    try:
        sample: Sample = generator.make(index, sample_rng(_WORKER["seed"], kind, lang, index))
    except SkipSample as e:
        return "skip", str(e) or "skipped"
    except Exception as e:
        raise RuntimeError(
            f"generator {kind!r} failed on {sample_key(kind, lang, index)}: {type(e).__name__}: {e}"
        ) from e
    sample.key = sample_key(kind, lang, index)
    return "ok", (sample.lang, encode_sample(sample, _WORKER["formats"][si]))


def _run(cfg: GenerateConfig, series: list[_Series], todo: list[tuple[int, int]], out: Path, report) -> None:
    if not todo:
        return
    total = sum(len(series[si].shard_indices(sh)) for si, sh in todo)
    tasks = ((si, series[si].kind, series[si].lang, i) for si, sh in todo for i in series[si].shard_indices(sh))
    generators = [s.generator for s in series]
    formats = [getattr(s.generator, "image_format", "png") for s in series]
    pool = None
    if cfg.workers > 1:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = mp.get_context(method).Pool(cfg.workers, _init_worker, (generators, cfg.seed, formats))
        results = pool.imap(_make_one, tasks, chunksize=max(1, min(16, total // (cfg.workers * 8))))
    else:
        _init_worker(generators, cfg.seed, formats)
        results = map(_make_one, tasks)

    bar = tqdm(total=total, unit="sample", desc=f"{cfg.kind}", disable=not cfg.progress, smoothing=0.1)
    writer = None
    try:
        it = iter(results)
        for si, shard in todo:
            s = series[si]
            path = out / shard_name(s.kind, s.lang, shard)
            remove_stale_temporaries(path)
            writer = ShardWriter(path)
            langs, skipped = Counter(), []
            for index in s.shard_indices(shard):
                status, payload = next(it)
                if status == "ok":
                    langs[payload[0]] += 1
                    writer.add(payload[1])
                else:
                    skipped.append({"index": index, "reason": payload})
                    report.skipped.append({"series": s.name, "index": index, "reason": payload})
                bar.update(1)
                bar.set_postfix(skipped=len(report.skipped), refresh=False)
            _finish_shard(out, s, shard, path, writer, langs, skipped)
            writer = None
            report.written_shards.append(path.name)
            report.samples += sum(langs.values())
        if pool is not None:
            pool.close()
    finally:
        bar.close()
        if writer is not None:
            writer.abort()
        if pool is not None:
            pool.terminate()
            pool.join()


def _finish_shard(out: Path, s: _Series, shard: int, path: Path, writer: ShardWriter, langs, skipped) -> None:
    """Record the shard in .parts, then rename it into place (a shard is done when both exist)."""
    tmp = writer.finish()
    _atomic_write_json(
        out / PARTS / f"{path.name}.json",
        {
            "name": path.name,
            "series": s.name,
            "kind": s.kind,
            "lang": s.lang,
            "shard": shard,
            "indices": [s.shard_indices(shard).start, s.shard_indices(shard).stop],
            "samples": sum(langs.values()),
            "langs": dict(sorted(langs.items())),
            "skipped": skipped,
            "bytes": tmp.stat().st_size,
            "sha256": sha256_file(tmp),
        },
    )
    writer.commit()


# ---- helpers -------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    try:
        tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:  # disk full, interrupted: leave no half-written temporary behind
        tmp.unlink(missing_ok=True)
        raise


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSION_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions
