"""Precomputed vision features (`vary train features`, `data.vision_features`): the same numbers as running
the frozen encoder, found only for the encoder and samples they were made from, and the same training losses."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from test_train_data import write_shards
from test_train_loop import losses, write_recipe
from vary.cli import app
from vary.data.dataset import DataError, ShardSource, VaryTrainDataset
from vary.modeling.loading import load_model
from vary.modeling.processor import VaryProcessor
from vary.train.features import FEATURES_FILE, META_FILE, compute_features, features_path, vision_fingerprint
from vary.train.recipes import RecipeError, load_recipe
from vary.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def folder(tmp_path):
    return write_shards(tmp_path / "d", count=10, per_shard=4, corrupt={3: "image"})


@torch.no_grad()
def encoder_outputs(model, source: ShardSource, indices) -> np.ndarray:
    processor = VaryProcessor(model.config, None)
    pixels = torch.stack([processor.image_tensor(source.conversation(i).image) for i in indices])
    return model.vision_vocab(pixels).numpy()


def test_features_are_the_encoders_outputs_and_an_interrupted_run_resumes(tiny_model_dir, folder):
    model = load_model(tiny_model_dir)
    out = compute_features(model, folder, batch_size=4, dtype="float32", workers=0, progress=False)
    features = np.load(out / FEATURES_FILE)
    meta = json.loads((out / META_FILE).read_text())
    assert features.shape == (10, 16, 64) and meta["done"] == 10 and meta["unreadable"] == [3]
    source = ShardSource(folder, progress=False)
    good = [i for i in range(10) if i != 3]
    np.testing.assert_allclose(features[good], encoder_outputs(model, source, good), atol=1e-5)
    assert not features[3].any()

    # Killed after two batches: the rows after `done` are lost, the next call writes only those.
    mm = np.load(out / FEATURES_FILE, mmap_mode="r+")
    mm[8:] = 0
    mm.flush()
    (out / META_FILE).write_text(json.dumps({**meta, "done": 8}))
    compute_features(model, folder, batch_size=4, dtype="float32", workers=0, progress=False)
    np.testing.assert_array_equal(np.load(out / FEATURES_FILE), features)
    assert json.loads((out / META_FILE).read_text())["unreadable"] == [3]

    # A damaged file beside a valid meta.json (a full disk, a bad copy) is made again, not resumed into
    (out / FEATURES_FILE).write_bytes((out / FEATURES_FILE).read_bytes()[:64])
    compute_features(model, folder, batch_size=4, dtype="float32", workers=0, progress=False)
    np.testing.assert_array_equal(np.load(out / FEATURES_FILE), features)
    assert json.loads((out / META_FILE).read_text())["unreadable"] == [3]

    # float16 (the default) stores the same numbers to half precision (replacing the float32 file)
    half = compute_features(model, folder, batch_size=4, workers=1, progress=False)
    np.testing.assert_allclose(np.load(half / FEATURES_FILE).astype(np.float32), features, rtol=2e-3, atol=2e-3)


def test_features_are_found_only_for_their_encoder_and_samples(tiny_model_dir, folder):
    model = load_model(tiny_model_dir)
    fingerprint = vision_fingerprint(model)
    source = ShardSource(folder, progress=False)
    with pytest.raises(DataError, match="vary train features --model .* --data"):
        features_path(folder, source, fingerprint)
    out = compute_features(model, folder, batch_size=4, workers=0, progress=False)
    assert features_path(folder, source, fingerprint) == out / FEATURES_FILE

    with torch.no_grad():
        model.vision_vocab.net_3.weight.mul_(1.01)  # another encoder: another fingerprint, no features
    assert vision_fingerprint(model) != fingerprint
    model.vision_vocab.net_3.weight.data.div_(1.01)
    model.config.image_mean = [0.5, 0.5, 0.5]  # the same weights fed other pixels
    assert vision_fingerprint(model) != fingerprint

    meta = json.loads((out / META_FILE).read_text())
    (out / META_FILE).write_text(json.dumps({**meta, "done": 4}))
    with pytest.raises(DataError, match="unfinished .4 of 10"):
        features_path(folder, source, fingerprint)
    (out / META_FILE).write_text(json.dumps(meta))
    data = (out / FEATURES_FILE).read_bytes()
    (out / FEATURES_FILE).write_bytes(data[:64])  # a damaged file: a clear error, not numpy's inside a worker
    with pytest.raises(DataError, match="unreadable"):
        features_path(folder, source, fingerprint)
    (out / FEATURES_FILE).write_bytes(data)
    write_shards(folder, count=4, per_shard=4, start=100)  # the folder gained a shard since
    with pytest.raises(DataError, match="other samples"):
        features_path(folder, ShardSource(folder, progress=False), fingerprint)


def test_training_on_features_gives_the_losses_of_training_on_images(tmp_path, folder):
    common = {"model": {"freeze": ["vision_vocab"]}, "train": {"max_steps": 3, "save_every": 10}}
    images = Trainer(load_recipe(write_recipe(tmp_path / "a.yaml", folder, tmp_path / "a", **common)), progress=False)
    images.setup()
    compute_features(images.accelerator.unwrap_model(images.model), folder, dtype="float32", workers=0, progress=False)
    images.train()

    recipe = write_recipe(tmp_path / "b.yaml", folder, tmp_path / "b", **common)
    features = Trainer(load_recipe(recipe, ["data.vision_features=true"]), progress=False)
    features.setup()
    batch = next(iter(features.loader))
    assert "pixel_values" not in batch and batch["vision_features"].shape[1:] == (16, 64)
    features.train()
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), abs=1e-5)
    assert features.state.skipped == images.state.skipped and images.state.skipped.get("corrupt")  # sample 3

    dataset = pickle.loads(pickle.dumps(features.dataset))  # as a DataLoader worker gets it: the file, not a copy
    assert dataset._features is None and torch.equal(dataset[(0, 0, 0)]["vision_features"],
                                                     features.dataset[(0, 0, 0)]["vision_features"])  # fmt: skip


def test_recipes_and_sources_without_their_features_are_clear_errors(tmp_path, folder):
    recipe = write_recipe(tmp_path / "r.yaml", folder, tmp_path / "run", model={"freeze": ["vision_vocab"]})
    with pytest.raises(RecipeError, match="data.augment: false"):
        load_recipe(recipe, ["data.vision_features=true", "data.augment=true"])
    with pytest.raises(RecipeError, match="model.freeze to hold vision_vocab"):
        load_recipe(recipe, ["data.vision_features=true", "model.freeze=[vision_encoder]"])
    trainer = Trainer(load_recipe(recipe, ["data.vision_features=true"]), progress=False)
    with pytest.raises(DataError, match=f"{folder}: no vision features"):
        trainer.setup()
    with pytest.raises(ValueError, match="no augmentation"):
        VaryTrainDataset([], None, 96, augment=lambda im, rng: im, features=[])


def test_vary_train_features_cli(tiny_model_dir, folder):
    result = CliRunner().invoke(app, ["train", "features", "--model", str(tiny_model_dir), "--data", str(folder),
                                      "--batch-size", "3", "--workers", "0"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and np.load(next(folder.glob(f"vision-features/*/{FEATURES_FILE}"))).shape[0] == 10
    result = CliRunner().invoke(app, ["train", "features", "--model", str(tiny_model_dir), "--data", str(folder),
                                      "--dtype", "int8"])  # fmt: skip
    assert result.exit_code == 2 and "dtype must be one of float16, float32" in result.output
