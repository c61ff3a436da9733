"""The frozen vision vocabulary's outputs, computed once per data source, so training can skip the encoder.

With the vision vocabulary frozen and augmentation off, its output for a sample never changes, yet it is most
of a small model's training step on a CPU (benchmarks/bench_train.py). `vary train features` writes those
outputs next to the data; a recipe with `data.vision_features: true` reads them instead of running the encoder.

    <source folder>/vision-features/<fingerprint>/features.npy   (N, image tokens, channels), float16 by default
                                                 /meta.json       fingerprint, sample keys' hash, rows done
    (a JSON source: <file stem>.vision-features/<fingerprint>/ beside the file)

The fingerprint hashes the vision vocabulary's weights and image preprocessing, so features from another
encoder are never read by mistake. Row i belongs to the source's sample i (the keys' hash checks the order).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vary.data.dataset import DataError, JsonSource, ShardSource, SkipSample, open_source
from vary.modeling.processor import ImageError, VaryProcessor
from vary.modeling.vary import VaryForCausalLM

FEATURES_DIR = "vision-features"
FEATURES_FILE = "features.npy"
META_FILE = "meta.json"
DTYPES = {"float16": np.float16, "float32": np.float32}


def vision_fingerprint(model: VaryForCausalLM) -> str:
    """16 hex digits naming the vision vocabulary's weights (as float32) and its image preprocessing."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.vision_vocab.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    c = model.config
    h.update(json.dumps([c.image_size, list(c.image_mean), list(c.image_std), c.image_resample]).encode())
    return h.hexdigest()[:16]


def features_dir(source_path: str | Path, fingerprint: str) -> Path:
    path = Path(source_path)
    if path.suffix.lower() == ".json":
        return path.with_name(f"{path.stem}.{FEATURES_DIR}") / fingerprint
    return path / FEATURES_DIR / fingerprint


def _keys_hash(source: ShardSource | JsonSource) -> str:
    """The samples' identity and order: features rows must line up with the source's records."""
    keys = source.keys if isinstance(source, ShardSource) else [str(e.get("image")) for e in source.entries]
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def _read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_meta(folder: Path, meta: dict) -> None:
    tmp = folder / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    os.replace(tmp, folder / META_FILE)  # atomic: a killed run leaves the previous count, never half a file


def _file_shape(folder: Path) -> list[int] | str:
    """The features file's shape from its header alone, or why it cannot be read (damaged, missing)."""
    try:
        return list(np.load(folder / FEATURES_FILE, mmap_mode="r").shape)
    except (OSError, ValueError) as err:
        return str(err)


def features_path(source_path: str | Path, source: ShardSource | JsonSource, fingerprint: str) -> Path:
    """The finished features file of this source for this vision vocabulary; DataError says how to make it."""
    folder = features_dir(source_path, fingerprint)
    meta = _read_meta(folder)
    make = f"make them with `vary train features --model <a model folder with this vision vocabulary> --data {source_path}`"
    if meta is None:
        raise DataError(f"{source_path}: no vision features for this model's vision vocabulary ({fingerprint}); {make}")
    if meta["done"] < meta["count"]:
        raise DataError(
            f"{folder}: unfinished ({meta['done']} of {meta['count']} samples); rerun the command to finish: {make}"
        )
    if meta["count"] != len(source) or meta["keys"] != _keys_hash(source):
        raise DataError(f"{folder}: made for other samples than {source_path} holds now (it changed?); {make}")
    shape = _file_shape(folder)  # checked here, not later inside a DataLoader worker
    if isinstance(shape, str):
        raise DataError(f"{folder / FEATURES_FILE}: unreadable ({shape}); {make}")
    if shape != meta["shape"]:
        raise DataError(f"{folder / FEATURES_FILE}: shape {shape}, meta.json says {meta['shape']}; {make}")
    return folder / FEATURES_FILE


class _Images(Dataset):
    """Sample i's preprocessed image, or None when the sample is unreadable (training skips it too)."""

    def __init__(self, source: ShardSource | JsonSource, processor: VaryProcessor):
        self.source, self.processor = source, processor

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None]:
        try:
            return i, self.processor.image_tensor(self.source.conversation(i).image)
        except (SkipSample, ImageError):
            return i, None


def _collate(items: list) -> tuple[list[int], list[int], torch.Tensor | None]:
    good = [(i, x) for i, x in items if x is not None]
    pixels = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in items], [i for i, _ in good], pixels


@torch.no_grad()
def compute_features(model: VaryForCausalLM, source_path: str | Path, batch_size: int = 32, dtype: str = "float16",
                     workers: int = 1, progress: bool = True) -> Path:  # fmt: skip
    """Write the vision vocabulary's outputs for every sample of a source; returns the features folder.

    Resumable: an interrupted run keeps the rows written so far and the next call continues from there.
    Unreadable samples keep a zero row and are listed in meta.json (training skips them as before).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    source = open_source(source_path, progress=progress)
    fingerprint, keys = vision_fingerprint(model), _keys_hash(source)
    folder = features_dir(source_path, fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    c, n = model.config, len(source)
    channels = model.projector_vary.in_features
    meta = _read_meta(folder)
    shape = [n, c.image_token_len, channels]
    stale = meta is not None and (meta["count"], meta["keys"], meta["dtype"]) != (n, keys, dtype)
    damaged = meta is not None and not stale and _file_shape(folder) != shape
    if meta is None or stale or damaged:  # replaced: it is derived data, and rows are only trusted with their meta
        if progress and stale:
            tqdm.write(f"{folder}: replacing features made for {meta['count']} samples as {meta['dtype']}")
        if progress and damaged:
            tqdm.write(f"{folder / FEATURES_FILE}: damaged or missing, starting it again")
        meta = {"fingerprint": fingerprint, "count": n, "keys": keys, "dtype": dtype, "done": 0, "unreadable": [],
                "shape": shape}  # fmt: skip
        np.lib.format.open_memmap(folder / FEATURES_FILE, "w+", DTYPES[dtype], tuple(shape)).flush()
        _write_meta(folder, meta)
    out = np.load(folder / FEATURES_FILE, mmap_mode="r+")
    limit = float(np.finfo(DTYPES[dtype]).max)
    start = meta["done"]
    images = torch.utils.data.Subset(_Images(source, VaryProcessor(c, None)), range(start, n))
    loader = DataLoader(images, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    device, param_dtype = model.projector_vary.weight.device, model.projector_vary.weight.dtype
    bar = tqdm(total=n, initial=start, desc=f"features {Path(source_path).name}", unit="img", disable=not progress)
    for indices, good, pixels in loader:
        if pixels is not None:
            feats = model.vision_vocab(pixels.to(device, param_dtype)).float().cpu().numpy()  # (B, T, C)
            if np.abs(feats).max() > limit:
                raise ValueError(f"vision features reach {np.abs(feats).max():.3g}, beyond {dtype}: use dtype float32")
            out[good] = feats.astype(DTYPES[dtype])
        meta["unreadable"] += sorted(set(indices) - set(good))
        meta["done"] = indices[-1] + 1
        out.flush()
        _write_meta(folder, meta)  # after the rows: `done` never counts a row that is not on disk
        bar.update(len(indices))
    bar.close()
    return folder
