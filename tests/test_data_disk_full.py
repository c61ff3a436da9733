"""A data run that hits a full disk leaves no hidden temporaries behind (issue 35: a 0-byte .manifest.json.tmp-*)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from vary.data import engine
from vary.data.shards import ShardWriter


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_json_write_on_a_full_disk_leaves_no_temporary(tmp_path, monkeypatch):
    real_write_text = Path.write_text

    def write_then_fail(self, *args, **kwargs):  # the file is created, then the disk fills up
        real_write_text(self, "")
        disk_full()

    monkeypatch.setattr(Path, "write_text", write_then_fail)
    with pytest.raises(OSError, match="No space left"):
        engine._atomic_write_json(tmp_path / "manifest.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_aborted_shard_on_a_full_disk_leaves_no_temporary(tmp_path, monkeypatch):
    writer = ShardWriter(tmp_path / "pages-en-00000.tar")
    writer.add([("0.txt", b"x" * 1000)])
    monkeypatch.setattr(writer._tar, "close", disk_full)  # closing writes the tar's end blocks
    with pytest.raises(OSError):
        writer.abort()
    assert list(tmp_path.iterdir()) == []
