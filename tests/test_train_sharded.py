"""Sharded engines on CPU (gloo) through `accelerate launch --config_file configs/accelerate/<x>.yaml`:
DeepSpeed ZeRO-2 and FSDP2 on 2 processes give the losses and weights of 1 process and resume exactly from
their own sharded checkpoints; ZeRO-3 gives the same losses and weights.

The first DeepSpeed run on a machine JIT-compiles its CPU shared-memory all-reduce op (~30-60 s, cached in
~/.cache/torch_extensions); later runs take ~10 s each."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from test_train_data import write_shards
from test_train_loop import REPO, free_port, losses, run_cli, write_recipe
from vary.modeling.vary import VaryForCausalLM
from vary.train.recipes import load_recipe
from vary.train.trainer import Trainer, read_log

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # distributed launches

ZERO2 = REPO / "configs" / "accelerate" / "deepspeed-zero2.yaml"


def launch(config: Path, recipe: Path, out: Path, *extra: str):
    return run_cli(sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                   "--main_process_port", str(free_port()), "-m", "vary", "train", "run", str(recipe), "--quiet",
                   f"train.output_dir={out}", *extra, timeout=240)  # fmt: skip


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    """Two saved models hold the same weights (rtol 1e-4); the message names the keys that differ.

    atol 1e-5 where needed: k_proj biases get (in exact arithmetic) zero gradient, so they hold only float noise.
    """
    one, two = VaryForCausalLM.from_pretrained(a).state_dict(), VaryForCausalLM.from_pretrained(b).state_dict()
    bad = [k for k in one if not torch.allclose(one[k], two[k], rtol=1e-4, atol=atol)]
    assert not bad, (bad[:8], [(one[k] - two[k]).abs().max().item() for k in bad[:8]])


def test_zero2_on_two_cpu_processes_matches_one_process_and_resumes(tmp_path):
    shards = write_shards(tmp_path / "pages", count=32, per_shard=16)
    recipe = write_recipe(tmp_path / "r.yaml", shards, tmp_path / "one")
    Trainer(load_recipe(recipe), progress=False).train()  # 1 process, no DeepSpeed: 4 micro-batches of 2 per step

    zero = launch(ZERO2, recipe, tmp_path / "zero2")
    assert zero.returncode == 0, zero.stderr[-3000:]
    run = tmp_path / "zero2"
    # A DeepSpeed checkpoint (per-rank ZeRO optimizer shards), not a DDP one: DeepSpeed really ran.
    assert list((run / "checkpoint-0000004" / "pytorch_model").glob("*zero_pp_rank_1*optim_states.pt"))
    one_losses = losses(tmp_path / "one")
    assert len(set(one_losses)) == 4 and losses(run) == pytest.approx(one_losses, rel=1e-5)
    grads = [r["grad_norm"] for r in read_log(run / "log.jsonl")]  # DeepSpeed clips and reports the norm
    assert grads == pytest.approx([r["grad_norm"] for r in read_log(tmp_path / "one" / "log.jsonl")], rel=1e-4)
    assert_same_weights(tmp_path / "one" / "model", run / "model", atol=1e-5)  # gathered from the ZeRO partitions

    # Crash after step 2: drop the later checkpoint and the final model, resume from the ZeRO checkpoint.
    shutil.rmtree(run / "checkpoint-0000004")
    shutil.rmtree(run / "model")
    resumed = launch(ZERO2, recipe, run, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in read_log(run / "log.jsonl")] == [1, 2, 3, 4]
    assert losses(run) == pytest.approx(one_losses, rel=1e-5)


def test_zero3_on_two_cpu_processes_matches_one_process(tmp_path):
    """ZeRO-3 also shards the parameters; the model is built whole (zero3_init_flag: false) and then partitioned."""
    shards = write_shards(tmp_path / "pages", count=16, per_shard=16)
    recipe = write_recipe(tmp_path / "r.yaml", shards, tmp_path / "one", train={"max_steps": 2, "save_every": 2})
    Trainer(load_recipe(recipe), progress=False).train()
    zero = launch(REPO / "configs" / "accelerate" / "deepspeed-zero3.yaml", recipe, tmp_path / "zero3")
    assert zero.returncode == 0, zero.stderr[-3000:]
    assert losses(tmp_path / "zero3") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    assert (tmp_path / "zero3" / "checkpoint-0000002" / "pytorch_model").is_dir()
    assert_same_weights(tmp_path / "one" / "model", tmp_path / "zero3" / "model", atol=1e-6)


def test_fsdp2_on_two_cpu_processes_matches_one_process_and_resumes(tmp_path):
    """accelerate selects FSDP only for GPU process groups; the trainer switches FSDP2 on for CPU processes."""
    shards = write_shards(tmp_path / "pages", count=32, per_shard=16)
    recipe = write_recipe(tmp_path / "r.yaml", shards, tmp_path / "one")
    Trainer(load_recipe(recipe), progress=False).train()
    fsdp, run = REPO / "configs" / "accelerate" / "fsdp.yaml", tmp_path / "fsdp"
    sharded = launch(fsdp, recipe, run)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert (run / "checkpoint-0000004" / "pytorch_model_fsdp_0").is_dir()  # FSDP's sharded checkpoint: FSDP ran
    one_losses = losses(tmp_path / "one")
    assert losses(run) == pytest.approx(one_losses, rel=1e-5)
    assert_same_weights(tmp_path / "one" / "model", run / "model", atol=1e-5)
    shutil.rmtree(run / "checkpoint-0000004")
    shutil.rmtree(run / "model")
    resumed = launch(fsdp, recipe, run, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(run) == pytest.approx(one_losses, rel=1e-5)
