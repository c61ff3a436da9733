"""Data engine: determinism, workers, shard ranges, resume after a kill, manifest, readers, CLI."""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import random
import signal
import tarfile
import time

import pytest
from PIL import Image
from typer.testing import CliRunner

from vary.data import generators as registry
from vary.data.cli import app
from vary.data.engine import DataEngineError, GenerateConfig, generate, parse_shard_range, sample_rng
from vary.data.sample import Sample, SkipSample
from vary.data.shards import ReadStats, iter_shard, iter_shards, list_shards


class CountingGenerator:
    """A tiny, fast generator for engine tests: skips every 7th index; optionally slow."""

    name = "counting"
    langs = ("en", "zh")

    def __init__(self, count, lang="en", size=32, delay="0"):
        self.count, self.lang, self.size, self.delay = count, lang, size, float(delay)

    def __len__(self):
        return self.count

    def make(self, index, rng):
        time.sleep(self.delay)
        if index % 7 == 6:
            raise SkipSample(f"input {index} is unlucky")
        value = rng.randrange(256)
        image = Image.new("L", (self.size, self.size), value)
        return Sample("", image, f"{self.lang} sample {index}: {value}", "ocr", self.lang, self.name, {"v": value})


@pytest.fixture(autouse=True)
def _register_counting(monkeypatch):
    monkeypatch.setitem(registry.GENERATORS, "counting", CountingGenerator)


def _cfg(out, **kw):
    base = dict(kind="counting", out=out, count=20, shard_size=4, progress=False)
    return GenerateConfig(**{**base, **kw})


def _shard_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def test_same_seed_gives_byte_identical_shards_whatever_the_workers(tmp_path):
    a = generate(_cfg(tmp_path / "a", workers=1, lang="mix"))
    generate(_cfg(tmp_path / "b", workers=2, lang="mix"))
    assert _shard_bytes(tmp_path / "a") == _shard_bytes(tmp_path / "b")
    assert sorted(_shard_bytes(tmp_path / "a")) == [
        f"counting-{lg}-0000{i}.tar" for lg in ("en", "zh") for i in (0, 1, 2)
    ]
    assert a.samples == 18 and len(a.skipped) == 2  # indices 6 of each language's 10
    generate(_cfg(tmp_path / "c", seed=1, lang="mix"))
    assert _shard_bytes(tmp_path / "a") != _shard_bytes(tmp_path / "c")
    # The sample rng depends on (seed, kind, lang, index) only.
    assert sample_rng(0, "counting", "en", 3).random() == sample_rng(0, "counting", "en", 3).random()
    assert sample_rng(0, "counting", "en", 3).random() != sample_rng(0, "counting", "zh", 3).random()


def test_pages_shards_identical_across_worker_counts(tmp_path):
    """The real page renderer through worker processes (glyph caches must not change the output)."""
    generate(GenerateConfig("pages", tmp_path / "a", count=6, shard_size=3, size=192, workers=1, progress=False))
    generate(GenerateConfig("pages", tmp_path / "b", count=6, shard_size=3, size=192, workers=2, progress=False))
    assert _shard_bytes(tmp_path / "a") == _shard_bytes(tmp_path / "b")


def test_shard_ranges_compose_into_the_full_run(tmp_path):
    generate(_cfg(tmp_path / "full"))
    generate(_cfg(tmp_path / "split", shard_range=(0, 2)))
    manifest = json.loads((tmp_path / "split" / "manifest.json").read_text())
    assert manifest["series"]["counting-en"]["complete"] is False and len(manifest["shards"]) == 2
    report = generate(_cfg(tmp_path / "split", shard_range=(2, None), workers=2))
    assert report.written_shards == ["counting-en-00002.tar", "counting-en-00003.tar", "counting-en-00004.tar"]
    assert _shard_bytes(tmp_path / "full") == _shard_bytes(tmp_path / "split")
    assert json.loads((tmp_path / "split" / "manifest.json").read_text()) == json.loads(
        (tmp_path / "full" / "manifest.json").read_text()
    )
    assert parse_shard_range("3:") == (3, None) and parse_shard_range(None) is None
    with pytest.raises(DataEngineError):
        parse_shard_range("3")


def test_resume_after_a_killed_run_completes_only_missing_shards(tmp_path):
    out = tmp_path / "out"
    slow = {"delay": "0.04"}  # generator options are part of the run's identity: the rerun passes them too
    child = mp.get_context("fork").Process(target=generate, args=(_cfg(out, options=slow),))
    child.start()
    deadline = time.time() + 20
    while len(list(out.glob("*.tar"))) < 2 and time.time() < deadline:
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    done = sorted(p.name for p in out.glob("*.tar"))
    assert 2 <= len(done) < 5, "the run should have been killed mid-way"
    for path in out.glob("*.tar"):  # every visible shard is complete
        assert len(list(iter_shard(path))) == (3 if path.name[-5] in "13" else 4)  # 6 and 13 are skipped

    report = generate(_cfg(out, options=slow))
    assert sorted(report.existing_shards) == done  # a visible shard is always a finished one
    assert not set(report.written_shards) & set(report.existing_shards)
    assert not list(out.glob(".*.tmp-*")), "temporary files of the killed run are cleaned up"
    generate(_cfg(tmp_path / "reference"))
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "reference")
    keys = [s.key for s in iter_shards(out)]
    assert len(keys) == len(set(keys)) == 18


def test_rerun_with_other_arguments_is_refused(tmp_path):
    generate(_cfg(tmp_path))
    assert generate(_cfg(tmp_path)).written_shards == []  # nothing left to do
    with pytest.raises(DataEngineError, match="other arguments"):
        generate(_cfg(tmp_path, seed=5))


def test_manifest_contents(tmp_path):
    generate(_cfg(tmp_path, lang="mix", count=15))  # en gets the odd sample: 8 + 7, index 6 skipped in each
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["counts"] == {"counting": {"en": 7, "zh": 6}} and m["total_samples"] == 13
    assert m["series"]["counting-en"]["identity"]["seed"] == 0
    assert {"python", "pillow", "numpy"} <= set(m["series"]["counting-en"]["versions"])
    assert [x["reason"] for x in m["skipped_samples"]] == ["input 6 is unlucky"] * 2
    shard = m["shards"][0]
    import hashlib

    assert shard["sha256"] == hashlib.sha256((tmp_path / shard["name"]).read_bytes()).hexdigest()


def test_reader_skips_and_counts_corrupt_members(tmp_path):
    generate(_cfg(tmp_path, count=4))
    path = tmp_path / "counting-en-00000.tar"
    members = []
    with tarfile.open(path) as tar:
        for m in tar:
            members.append((m, tar.extractfile(m).read()))
    bad = tmp_path / "bad" / "bad.tar"
    bad.parent.mkdir()
    with tarfile.open(bad, "w") as tar:
        for i, (m, data) in enumerate(members):
            if i == 0:
                data = b"\x89PNG broken"  # first sample's image
            if i == 3:
                data = b"{not json"  # second sample's json
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    stats = ReadStats()
    assert [s.key for s in iter_shard(bad, stats)] == ["counting-en-00000002", "counting-en-00000003"]
    assert stats.corrupt == 2 and stats.samples == 2
    truncated = tmp_path / "bad" / "truncated.tar"
    truncated.write_bytes(path.read_bytes()[:1500])
    stats = ReadStats()
    assert len(list(iter_shard(truncated, stats))) <= 1 and stats.corrupt >= 1
    assert list_shards(tmp_path / "bad") == [bad, truncated]


def test_cli_generate_stats_preview_export(tmp_path):
    runner = CliRunner()
    out = tmp_path / "data"
    args = ["generate", "tables", "--out", str(out), "--count", "3", "--size", "256", "--lang", "zh",
            "--workers", "1", "--quiet", "-o", "format=latex"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 1 shard(s), 3 samples" in result.output
    result = runner.invoke(app, ["stats", str(out), "--verify", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["counts"] == {"tables": {"zh": 3}} and stats["verify"]["bad_shards"] == 0

    result = runner.invoke(app, ["preview", str(out), "--out", str(tmp_path / "sheet.png"), "--n", "3"])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "sheet.png").width > 600

    result = runner.invoke(app, ["export-llava", str(out), "--out", str(tmp_path / "llava")])
    assert result.exit_code == 0, result.output
    entries = json.loads((tmp_path / "llava" / "data.json").read_text(encoding="utf-8"))
    assert len(entries) == 3
    first = entries[0]
    assert first["conversations"][0] == {"from": "human", "value": "<image>\nConvert this table to latex format."}
    assert first["conversations"][1]["from"] == "gpt"
    assert first["conversations"][1]["value"].startswith(r"\begin{tabular}")
    assert Image.open(tmp_path / "llava" / first["image"]).size[0] == 256

    result = runner.invoke(app, ["generate", "pdf", "--out", str(tmp_path / "x"), "--input-dir", str(tmp_path / "no")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(app, ["generate", "nosuch", "--out", str(tmp_path / "x"), "--count", "1"])
    assert result.exit_code == 2 and "unknown data generator" in result.output
    assert not (tmp_path / "x").exists()


def test_registry_resolves_every_generator_lazily():
    for name in ("pdf", "pages", "tables", "natural"):
        assert registry.get_generator_class(name).name == name
    with pytest.raises(KeyError):
        registry.get_generator_class("nosuch")
    assert random.Random(0).random() == random.Random(0).random()
