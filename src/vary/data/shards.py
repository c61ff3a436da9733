"""WebDataset-style tar shards: byte-identical writing and fault-tolerant reading.

A shard `{kind}-{lang}-{shard:05d}.tar` holds, per sample, `{key}.png` (or `.jpg` for photos) and
`{key}.json` = {"target", "task", "lang", "kind", "prompt", "meta"}, in index order. Any WebDataset
reader can stream it; `iter_shard` / `iter_shards` are ours (training, evaluation, export, preview).

Byte-identical output for identical samples: members are written in a fixed order with fixed tar
headers (mtime 0, uid/gid 0, no user names, mode 0644, ustar format), JSON with sorted keys, and
images encoded without timestamps. We write with Python's tarfile rather than webdataset's TarWriter
because the latter stamps the current time into every header.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vary.data.sample import Sample
from vary.prompts import TASK_PROMPTS

log = logging.getLogger(__name__)

IMAGE_EXTS = ("png", "jpg", "jpeg")
PNG_COMPRESS_LEVEL = 1  # zlib level 1: ~3x faster than level 6 on text pages for ~10% more bytes
JPEG_QUALITY = 90


def shard_name(kind: str, lang: str, shard: int) -> str:
    return f"{kind}-{lang}-{shard:05d}.tar"


def prompt_for(task: str, lang: str) -> str:
    """The instruction for a task; a language-specific variant (e.g. "ocr_zh") wins when it exists."""
    return TASK_PROMPTS.get(f"{task}_{lang}", TASK_PROMPTS.get(task, ""))


def encode_sample(sample: Sample, image_format: str = "png") -> list[tuple[str, bytes]]:
    """The (member name, bytes) pairs one sample becomes inside a shard."""
    if "." in sample.key or "/" in sample.key:
        raise ValueError(f"sample key {sample.key!r} must not contain '.' or '/'")
    image = sample.image
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    if image_format == "jpg":
        image.convert("RGB").save(buf, "JPEG", quality=JPEG_QUALITY)
    elif image_format == "png":
        buf.write(png_bytes(image))
    else:
        raise ValueError(f"unknown image format {image_format!r} (png or jpg)")
    record = {
        "target": sample.target,
        "task": sample.task,
        "lang": sample.lang,
        "kind": sample.kind,
        "prompt": prompt_for(sample.task, sample.lang),
        "meta": sample.meta,
    }
    text = json.dumps(record, ensure_ascii=False, sort_keys=True)
    return [(f"{sample.key}.{image_format}", buf.getvalue()), (f"{sample.key}.json", text.encode("utf-8"))]


def png_bytes(image: Image.Image, level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """A standard 8-bit grayscale or RGB PNG with filter "none" on every row.

    Hand-written because Pillow's encoder always runs adaptive row filtering, which took half of its
    ~30 ms on a dense 1024 px page; documents barely benefit from it (our files are ~8% *smaller*).
    Any PNG decoder reads the result.
    """
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    a = np.asarray(image)
    h, w = a.shape[:2]
    raw = np.zeros((h, a[0].size + 1), dtype=np.uint8)  # each row: filter byte 0 + pixels
    raw[:, 1:] = a.reshape(h, -1)
    color_type = 0 if image.mode == "L" else 2

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    idat = zlib.compress(raw.tobytes(), level)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class ShardWriter:
    """Writes one shard to a hidden temporary file; `commit()` renames it into place atomically.

    A run killed mid-shard leaves only a `.{name}.tmp-{pid}` file, which readers ignore and the next
    run deletes, so a shard is either complete and visible or absent.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        # Both stay open across add() calls; finish()/abort() close them.
        self._file = open(self.tmp, "wb")  # noqa: SIM115
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self.count = 0

    def add(self, members: Iterable[tuple[str, bytes]]) -> None:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def finish(self) -> Path:
        """Close the tar and flush it to disk; returns the (still hidden) temporary file."""
        if not self._file.closed:
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        return self.tmp

    def commit(self) -> None:
        self.finish()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            if not self._file.closed:
                try:
                    self._tar.close()  # may fail again (disk full): the file is deleted anyway
                finally:
                    self._file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def remove_stale_temporaries(path: Path) -> None:
    """Delete leftovers of killed runs for this shard (`.{name}.tmp-*`)."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        tmp.unlink(missing_ok=True)


# ---- reading -------------------------------------------------------------------------------------
@dataclass
class ReadStats:
    """What a reader saw; corrupt members are skipped and counted here instead of raising."""

    samples: int = 0
    corrupt: int = 0
    errors: list[str] = field(default_factory=list)

    def bad(self, where: str, why: str) -> None:
        self.corrupt += 1
        if len(self.errors) < 100:
            self.errors.append(f"{where}: {why}")
        log.warning("skipping corrupt shard member %s: %s", where, why)


def iter_records(path: Path, stats: ReadStats | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each sample of a shard, grouping consecutive members by key."""
    stats = stats if stats is not None else ReadStats()
    key, files = None, {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                stem, _, ext = base.partition(".")
                if stem != key and key is not None:
                    yield key, files
                    files = {}
                key = stem
                files[ext.lower()] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        stats.bad(str(path), f"unreadable tar ({type(e).__name__}: {e}); later samples of this shard lost")
    if key is not None:
        yield key, files


def decode_record(key: str, files: dict[str, bytes]) -> Sample:
    """A Sample from one record's files; raises ValueError (json/image problems) on a corrupt record."""
    if "json" not in files:
        raise ValueError("no .json member")
    ext = next((e for e in IMAGE_EXTS if e in files), None)
    if ext is None:
        raise ValueError("no image member")
    try:
        record = json.loads(files["json"].decode("utf-8"))
        image = Image.open(io.BytesIO(files[ext]))
        image.load()
    except Exception as e:  # any decoder error means a corrupt member
        raise ValueError(f"{type(e).__name__}: {e}") from e
    missing = {"target", "task", "lang", "kind"} - set(record)
    if missing:
        raise ValueError(f"json lacks {sorted(missing)}")
    return Sample(
        key=key,
        image=image.convert("RGB"),
        target=record["target"],
        task=record["task"],
        lang=record["lang"],
        kind=record["kind"],
        meta=record.get("meta") or {},
    )


def iter_shard(path: Path, stats: ReadStats | None = None) -> Iterator[Sample]:
    """Samples (RGB images) of one shard; corrupt members are skipped and counted in `stats`."""
    stats = stats if stats is not None else ReadStats()
    for key, files in iter_records(path, stats):
        try:
            sample = decode_record(key, files)
        except ValueError as e:
            stats.bad(f"{path}:{key}", str(e))
            continue
        stats.samples += 1
        yield sample


def list_shards(dir_or_paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Shard files: a folder (searched recursively, hidden temporaries excluded), a file, or a list."""
    if isinstance(dir_or_paths, (str, Path)):
        dir_or_paths = [dir_or_paths]
    paths: list[Path] = []
    for p in map(Path, dir_or_paths):
        if p.is_dir():
            paths.extend(sorted(q for q in p.rglob("*.tar") if not q.name.startswith(".")))
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"no shard file or folder at {p}")
    return paths


def iter_shards(dir_or_paths: str | Path | Iterable[str | Path], stats: ReadStats | None = None) -> Iterator[Sample]:
    """Samples of many shards in sorted order (see `iter_shard`)."""
    stats = stats if stats is not None else ReadStats()
    for path in list_shards(dir_or_paths):
        yield from iter_shard(path, stats)
