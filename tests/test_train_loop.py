"""The training loop end to end on toy models: 2 processes = 1 process, SIGKILL + resume = uninterrupted,
frozen branches stay bit-identical, bad input is survived or explained, and nano learns on engine data."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import matplotlib.axes
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

import vary
from test_train_data import TINY_MODEL, make_sample, write_shards
from test_train_init import BASE_MODEL
from vary.cli import app
from vary.data.dataset import VaryTrainDataset, open_source
from vary.data.sample import Sample
from vary.data.shards import ShardWriter, encode_sample
from vary.modeling import fast
from vary.modeling.tokenizer import load_tokenizer
from vary.modeling.vary import VaryForCausalLM
from vary.train.losses import _batches, heldout_losses
from vary.train.plot import plot_run
from vary.train.recipes import RecipeError, load_recipe
from vary.train.trainer import OutOfMemory, Trainer, read_log

pytestmark = pytest.mark.usefixtures("one_thread")  # subprocesses get OMP_NUM_THREADS=1 (run_cli)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("data") / "pages", count=48, per_shard=16)


def write_recipe(path: Path, data_dir: Path, out: Path, base: bool = False, **sections) -> Path:
    """A toy-size recipe file: 2-layer ViT at 256 px (16 image tokens), 2-layer LM, BPE trained on the data."""
    recipe = {
        "model": {"preset": "vary-base-qwen" if base else "nano", "config": BASE_MODEL if base else TINY_MODEL,
                  "freeze": ["vision_vocab", "clip"] if base else []},
        "data": {"sources": [{"path": str(data_dir)}], "max_length": 96, "augment": False},
        "optim": {"lr": 2e-3, "warmup_steps": 1, "scheduler": "cosine", "min_lr": 1e-4},
        "train": {"output_dir": str(out), "batch_size": 2, "global_batch_size": 8, "max_steps": 4, "save_every": 2},
    }  # fmt: skip
    for section, values in sections.items():
        recipe[section] = {**recipe.get(section, {}), **values}
    path.write_text(yaml.safe_dump(recipe))
    return path


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_log(run / "log.jsonl")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


# --- multi-process and resume --------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_cpu_processes_give_the_losses_of_one(tmp_path, shards):
    recipe = write_recipe(tmp_path / "r.yaml", shards, tmp_path / "one")
    Trainer(load_recipe(recipe), progress=False).train()  # 1 process: 4 micro-batches of 2 per step
    two = run_cli(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--main_process_port", str(free_port()), "-m", "vary", "train", "run", str(recipe), "--quiet",
                  f"train.output_dir={tmp_path / 'two'}")  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    one_losses, two_losses = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one_losses) == 4 and len(set(one_losses)) == 4  # the model changes step to step
    assert two_losses == pytest.approx(one_losses, rel=1e-5)
    run = tmp_path / "two" / "checkpoint-0000004"
    state = json.loads((run / "trainer_state.json").read_text())
    assert state["samples"] == 32 and len(list(run.glob("random_states_*.pkl"))) == 2  # one RNG state per process
    one = VaryForCausalLM.from_pretrained(tmp_path / "one" / "model").state_dict()
    two = VaryForCausalLM.from_pretrained(tmp_path / "two" / "model").state_dict()
    # Same updates, not just losses. Except the attention key biases: a key bias adds the same q.b to every logit
    # of a softmax row, so its true gradient is 0 and what it gets is rounding noise, which AdamW turns into
    # lr-sized steps of either sign (seen differing by 1e-6 on one CPU, equal on another).
    compared = [k for k in one if not k.endswith("k_proj.bias")]
    assert len(one) - len(compared) == sum(k.endswith("q_proj.bias") for k in one) > 0  # one per decoder layer
    assert all(torch.allclose(one[k], two[k], rtol=1e-4, atol=1e-6) for k in compared)


KILLER = """
import os, signal, sys
from vary.train.recipes import load_recipe
from vary.train.trainer import Trainer

def kill(path, step):
    if step == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)

Trainer(load_recipe(sys.argv[1]), on_checkpoint=kill, progress=False).train()
"""


@pytest.mark.slow  # two training subprocesses, one killed: ~10 s on 2 cores
def test_sigkill_after_a_checkpoint_then_resume_continues_exactly(tmp_path, shards):
    # Augmentation on (it is seeded per sample position, so it must be identical after resuming).
    common = dict(train={"max_steps": 6, "save_every": 2, "keep_last": 2}, data={"augment": True})
    reference = write_recipe(tmp_path / "ref.yaml", shards, tmp_path / "ref", **common)
    Trainer(load_recipe(reference), progress=False).train()

    recipe = write_recipe(tmp_path / "r.yaml", shards, tmp_path / "run", **common)
    killed = run_cli(sys.executable, "-c", textwrap.dedent(KILLER), str(recipe), "4")
    assert killed.returncode == -signal.SIGKILL
    run = tmp_path / "run"
    assert (run / "checkpoint-0000004").is_dir() and not (run / "model").exists()
    (run / ".checkpoint-0000006.tmp").mkdir()  # what a kill during a checkpoint write leaves: ignored, removed
    with pytest.raises(RecipeError, match="already holds checkpoints of a run: pass --resume"):
        Trainer(load_recipe(recipe), progress=False).train()  # a new run must not mix with the old one

    state = Trainer(load_recipe(recipe), resume=True, progress=False).train()
    assert state.step == 6 and state.samples == 48
    assert losses(run) == pytest.approx(losses(tmp_path / "ref"), rel=1e-6, abs=0)
    assert [r["step"] for r in read_log(run / "log.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in run.glob("*checkpoint-*")) == ["checkpoint-0000004", "checkpoint-0000006"]
    # A checkpoint folder is a loadable model, equal to the final one.
    model, processor = vary.load(run / "checkpoint-0000006")
    final = VaryForCausalLM.from_pretrained(run / "model")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), final.state_dict().values(), strict=True))
    assert processor.tokenizer.convert_tokens_to_ids("<imgpad>") == model.config.image_patch_token_id
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    # vary train plot RUN_DIR
    result = CliRunner().invoke(app, ["train", "plot", str(run)])
    assert result.exit_code == 0, result.output
    with Image.open(run / "curves.png") as png:
        assert png.size[0] > 400


# --- freezing ----------------------------------------------------------------------------------------------
def test_vary_base_steps_keep_frozen_vision_bit_identical(tmp_path, shards, monkeypatch):
    recipe = write_recipe(
        tmp_path / "r.yaml",
        shards,
        tmp_path / "run",
        base=True,
        model={"gradient_checkpointing": True},  # checkpointing with frozen branches must still train the rest
        data={"max_length": 160},  # the MPT system prompt is long
        train={"max_steps": 2, "mixed_precision": "bf16"},
    )
    trainer = Trainer(load_recipe(recipe), progress=False)
    # a CPU without native bf16 (as on every CPU this test may meet): warned, and fp32
    monkeypatch.setattr("vary.train.accelerate_setup.cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="needs a GPU or a CPU with native bf16; this run uses fp32"):
        trainer.setup()
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert model.clip is not None and trainer.accelerator.mixed_precision == "no" and model.is_activation_checkpointing
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    fast_encodes = []
    encode = fast.sam_encoder_forward
    monkeypatch.setattr(fast, "sam_encoder_forward", lambda *a: fast_encodes.append(1) or encode(*a))
    trainer.train()
    assert len(fast_encodes) >= 2  # on a CPU the frozen vision vocabulary encodes on the fast inference path
    frozen, trained = 0, 0
    for name, param in model.named_parameters():
        if name.startswith(("vision_vocab.", "clip.")):
            assert not param.requires_grad and torch.equal(param, before[name]), name
            frozen += 1
        else:
            assert param.requires_grad and not torch.equal(param, before[name]), name
            trained += 1
    assert frozen > 20 and trained > 10
    assert model.config.template == "mpt"


# --- bad input ---------------------------------------------------------------------------------------------
def test_corrupt_samples_are_skipped_and_counted_and_the_run_goes_on(tmp_path):
    data = write_shards(tmp_path / "bad", count=24, per_shard=12, corrupt={3: "image", 17: "json"})
    recipe = write_recipe(tmp_path / "r.yaml", data, tmp_path / "run", train={"max_steps": None, "epochs": 1})
    state = Trainer(load_recipe(recipe), progress=False).train()
    assert state.step == 3 and state.skipped == {"corrupt": 2} and state.samples == 22
    assert sum(r["skipped"].get("corrupt", 0) for r in read_log(tmp_path / "run" / "log.jsonl")) == 2
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_missing_or_empty_data_folder_is_a_clear_cli_error(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app, ["train", "run", "nano", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "nope: no such data folder" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(
        app, ["train", "run", "nano", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "no .tar shards" in result.output


def test_out_of_memory_batch_gets_advice(tmp_path, shards, monkeypatch):
    def no_memory(self, *args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: you tried "
                           "to allocate 68719476736 bytes.")  # fmt: skip

    monkeypatch.setattr(VaryForCausalLM, "forward", no_memory)
    recipe = write_recipe(tmp_path / "r.yaml", shards, tmp_path / "run", train={"batch_size": 4})
    with pytest.raises(OutOfMemory) as err:
        Trainer(load_recipe(recipe), progress=False).train()
    text = str(err.value)
    assert "out of memory on cpu with train.batch_size=4" in text
    assert "train.batch_size=2" in text and "accumulation goes from 2 to 4" in text
    assert "model.gradient_checkpointing=true" in text and "data.max_length=64" in text
    result = CliRunner().invoke(app, ["train", "run", str(recipe), "--quiet"])
    assert result.exit_code == 3 and "gradient_checkpointing" in result.output


# --- it learns -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_nano_recipe_learns_on_engine_data(tmp_path):
    """Charts + tables from the data engine, mixed 1:1. Their targets (python dicts, LaTeX tables) have
    structure a few steps can learn; a page of random words needs OCR (hours) to go below its unigram level."""
    from vary.data.engine import GenerateConfig, generate

    for kind in ("charts", "tables"):
        generate(GenerateConfig(kind=kind, out=tmp_path / kind, count=16, size=256, shard_size=16, workers=1,
                                progress=False))  # fmt: skip
    overrides = [
        f"data.sources=[{{path: '{tmp_path / 'charts'}'}}, {{path: '{tmp_path / 'tables'}'}}]",
        f"train.output_dir={tmp_path / 'run'}",
        # nano at 256 px (16 image tokens) and short answers, so a CPU step takes ~1 s
        "model.config={vision_config: {image_size: 256}, image_token_len: 16}", "data.max_length=96",
        "train.batch_size=8", "train.global_batch_size=8", "train.max_steps=24", "train.save_every=24",
        "optim.lr=2e-3", "optim.warmup_steps=3", "data.num_workers=0",
    ]  # fmt: skip
    state = Trainer(load_recipe("nano", overrides), progress=False).train()
    curve = losses(tmp_path / "run")
    first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
    assert state.step == 24 and state.skipped == {} and last < 0.6 * first, curve


def test_lr_scale_gives_a_part_its_own_learning_rate_and_a_char_tokenizer(tmp_path, shards):
    recipe = write_recipe(
        tmp_path / "r.yaml", shards, tmp_path / "run",
        model={"tokenizer_type": "chars", "config": {**TINY_MODEL, "projector_norm": True}},
        optim={"lr_scale": {"vision_vocab": 0.1, "projector_vary": 0.5}, "scheduler": "constant", "warmup_steps": 0},
        train={"max_steps": 2},
    )  # fmt: skip
    trainer = Trainer(load_recipe(recipe), progress=False)
    trainer.setup()
    model = trainer.accelerator.unwrap_model(trainer.model)
    lr_of = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(lr_of[id(p)] == pytest.approx(2e-4) for p in model.vision_vocab.parameters())
    assert all(lr_of[id(p)] == pytest.approx(2e-3) for p in model.language_model.parameters())
    for module in (model.projector_vary, model.projector_norm):  # the norm belongs to the projector part
        assert all(lr_of[id(p)] == pytest.approx(1e-3) for p in module.parameters())
    tokenizer = json.loads((tmp_path / "run" / "tokenizer" / "tokenizer.json").read_text())
    assert tokenizer["model"]["type"] == "WordLevel"  # one token per character
    trainer.train()
    assert [round(r["lr"], 8) for r in read_log(tmp_path / "run" / "log.jsonl")] == [2e-3, 2e-3]  # the recipe's lr
    with pytest.raises(RecipeError, match="optim.lr_scale.eyes"):
        load_recipe(recipe, ["optim.lr_scale={eyes: 0.1}"])


def test_continuing_on_new_characters_extends_the_char_tokenizer(tmp_path, shards):
    first = write_recipe(tmp_path / "a.yaml", shards, tmp_path / "a", model={"tokenizer_type": "chars"},
                         train={"max_steps": 1})  # fmt: skip
    Trainer(load_recipe(first), progress=False).train()
    old = load_tokenizer(tmp_path / "a" / "model")
    (tmp_path / "a" / "model" / "lexicon.txt").write_text("title 3\n", encoding="utf-8")  # a word list
    charts = tmp_path / "charts"  # targets with characters the page texts never use
    charts.mkdir()
    writer = ShardWriter(charts / "charts-en-00000.tar")
    for i in range(8):
        target = f"{{'title': 'T{i}', 'data': [[{i}, 2]]}}"
        writer.add(encode_sample(Sample(f"charts-en-{i:08d}", make_sample(i).image, target, "chart", "en", "charts")))
    writer.commit()
    second = write_recipe(tmp_path / "b.yaml", charts, tmp_path / "b", init={"checkpoint": str(tmp_path / "a" / "model")},
                          train={"max_steps": 1})  # fmt: skip
    trainer = Trainer(load_recipe(second), progress=False)
    trainer.train()
    new = load_tokenizer(tmp_path / "b" / "model")
    assert (tmp_path / "b" / "model" / "lexicon.txt").read_text(encoding="utf-8") == "title 3\n"  # kept with it
    added = sorted(set(new.get_vocab()) - set(old.get_vocab()))
    assert {"{", "}", "[", "]", "'"} <= set(added)
    assert all(new.convert_tokens_to_ids(t) == i for t, i in old.get_vocab().items())  # old ids keep their rows
    labels = trainer.dataset[(0, 0, 0)]["labels"]
    assert new.unk_token_id not in labels
    assert new.decode([t for t in labels if t >= 0], skip_special_tokens=True).startswith("{'title'")


def test_freezing_the_vision_encoder_trains_the_downsampling_convs_only(tmp_path, shards):
    recipe = write_recipe(tmp_path / "r.yaml", shards, tmp_path / "run", model={"freeze": ["vision_encoder"]},
                          train={"max_steps": 2})  # fmt: skip
    trainer = Trainer(load_recipe(recipe), progress=False)
    trainer.setup()
    model = trainer.accelerator.unwrap_model(trainer.model)
    before = {k: v.detach().clone() for k, v in model.vision_vocab.named_parameters()}
    trainer.train()
    for name, param in model.vision_vocab.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == name.startswith(("net_2.", "net_3.")), name


# --- held-out evaluation during training ---------------------------------------------------------------------
def test_heldout_batches_never_leave_a_sample_alone():
    assert [list(b) for b in _batches(5, 2)] == [[0, 1], [2, 3, 4]]
    assert [list(b) for b in _batches(4, 2)] == [[0, 1], [2, 3]]
    assert [list(b) for b in _batches(1, 8)] == [[0]]


def test_heldout_loss_shows_whether_the_model_uses_the_image(tmp_path, shards):
    trainer = Trainer(load_recipe(write_recipe(tmp_path / "r.yaml", shards, tmp_path / "run")), progress=False)
    trainer.setup()
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    dataset = VaryTrainDataset([trainer.sources[0]], trainer.processor, 96)
    random_init = heldout_losses(model, dataset, 6, 4)
    assert random_init["loss"] != pytest.approx(random_init["loss_other_images"], abs=1e-4)
    with torch.no_grad():
        model.projector_vary.weight.zero_()  # image features = the projector's bias: the image no longer matters
    blind = heldout_losses(model, dataset, 6, 4)
    assert blind["loss"] == pytest.approx(blind["loss_other_images"], abs=1e-6)


def test_eval_sources_are_scored_during_training_and_match_the_saved_model(tmp_path, shards):
    heldout = write_shards(tmp_path / "heldout", count=6, per_shard=6, start=1000)
    recipe = write_recipe(tmp_path / "r.yaml", shards, tmp_path / "run",
                          data={"eval_sources": [{"path": str(heldout)}], "eval_samples": 5},
                          train={"eval_every": 2, "max_steps": 3})  # fmt: skip
    Trainer(load_recipe(recipe), progress=False).train()
    records = read_log(tmp_path / "run" / "eval.jsonl")
    assert [r["step"] for r in records] == [2, 3]  # every eval_every steps and at the end
    model, processor = vary.load(tmp_path / "run" / "model")
    dataset = VaryTrainDataset([open_source(heldout, progress=False)], processor, 96)
    again = heldout_losses(model.eval(), dataset, 5, 2)
    assert records[-1]["heldout/loss"] == pytest.approx(again["loss"], abs=1e-4)
    assert records[-1]["heldout/loss_other_images"] == pytest.approx(again["loss_other_images"], abs=1e-4)
    with pytest.raises(RecipeError, match="eval_every"):
        load_recipe(recipe, ["train.eval_every=0"])
    # The plot draws both held-out curves next to the training loss.
    with mock.patch("matplotlib.axes.Axes.plot", side_effect=matplotlib.axes.Axes.plot, autospec=True) as plot:
        plot_run(tmp_path / "run")
    labels = [c.kwargs.get("label") for c in plot.call_args_list]
    assert "heldout" in labels and "heldout, other images" in labels
