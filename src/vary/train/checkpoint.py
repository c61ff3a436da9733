"""Training checkpoints: written whole or not at all, found again by step, and read back for --resume.

    RUN/checkpoint-0000100/   accelerate state (model, optimizer, scheduler, RNG per process; DeepSpeed or
                              FSDP shards in their own format) + trainer_state.json + config.json + tokenizer,
                              so `vary.load(checkpoint)` works on single-process and DDP ones
A checkpoint is written to a hidden temporary folder, flushed, and renamed into place; a killed run leaves a
`.checkpoint-*.tmp` folder that the next run removes. Only the last `keep_last` are kept.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from accelerate import Accelerator

from vary.data.dataset import DataError  # what the CLI reports for a bad --resume folder

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"


def list_checkpoints(out: Path) -> list[Path]:
    """The complete checkpoints of a run folder, oldest first."""
    found = [p for p in out.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def remove_unfinished(out: Path) -> None:
    """Delete the temporary folders of checkpoints a killed run did not finish."""
    for stale in out.glob(f".{CHECKPOINT_PREFIX}*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def save_checkpoint(accelerator: Accelerator, out: Path, step: int, state: dict, config, tokenizer,
                    keep_last: int) -> Path:  # fmt: skip
    """Write checkpoint `step` (every process takes part); `state` is the trainer's own JSON state."""
    main = accelerator.is_main_process
    final = out / f"{CHECKPOINT_PREFIX}{step:07d}"
    tmp = out / f".{CHECKPOINT_PREFIX}{step:07d}.tmp"
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every process writes its own RNG state (and, for FSDP, its shard)
    accelerator.wait_for_everyone()  # save_state can return on rank 0 while other ranks still write into tmp
    if main:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(out)
        for old in list_checkpoints(out)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict:
    """Restore accelerate's state from `path`; returns the trainer's JSON state saved with it."""
    if not (path / STATE_FILE).is_file():
        raise DataError(f"{path}: not a complete checkpoint (no {STATE_FILE})")
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """Flush every file of a checkpoint before it is renamed into place."""
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)
