"""Setting accelerate up for every launch the trainer supports: one CPU or GPU, DDP, FSDP2 and DeepSpeed ZeRO-2/3,
on GPUs or on CPU processes over gloo. Each function works around one gap between accelerate 1.15 and what
the trainer needs; the docstrings say which.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration

from vary.modeling.quantize import cpu_has_native_bf16
from vary.train.recipes import Recipe, RecipeError


class _TiedWeightsNote(logging.Filter):
    """accelerate warns on every checkpoint that the tied lm_head copy is not stored: that is intended (the
    model re-ties it on load; `vary.load(checkpoint)` is tested), so the note is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNote())


def make_accelerator(recipe: Recipe, out) -> tuple[Accelerator, int]:
    """The run's Accelerator and its gradient-accumulation steps (global batch / (micro-batch x processes)).

    accelerate switches DeepSpeed off when cpu=True, and turns FSDP on only for GPU-type process groups. Both
    run on CPU (DeepSpeed on its CPU accelerator, torch FSDP2 over gloo), so their processes start with
    cpu=False and an explicit gloo group, and FSDP is switched on by hand once the Accelerator exists."""
    r = recipe
    cpu = not torch.cuda.is_available()
    precision = r.train.mixed_precision
    # bf16 autocast on a CPU only where it has bf16 instructions (AVX512-BF16 / AMX: ~2.7x faster for the conv
    # vocabulary); elsewhere it is emulated and far slower than fp32
    if cpu and precision != "no" and not (precision == "bf16" and cpu_has_native_bf16()):
        warnings.warn(f"train.mixed_precision={precision} needs a GPU or a CPU with native bf16; this run uses fp32",
                      stacklevel=3)  # fmt: skip
        precision = "no"
    sharded = {
        e: os.environ.get(e, "false").lower() == "true" for e in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP")
    }
    fsdp_on_cpu = cpu and sharded["ACCELERATE_USE_FSDP"]
    group = {"backend": "gloo"} if cpu and any(sharded.values()) else {}
    if group:
        cpu = False
    world = PartialState(cpu=cpu, **group).num_processes
    per_step = r.train.batch_size * world
    if r.train.global_batch_size % per_step:
        raise RecipeError(
            f"{r.source}: train.global_batch_size={r.train.global_batch_size} is not a multiple of "
            f"train.batch_size x processes = {r.train.batch_size} x {world}"
        )
    accumulation = r.train.global_batch_size // per_step
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=precision,
        gradient_accumulation_steps=accumulation,
        kwargs_handlers=[InitProcessGroupKwargs(**group)] if group else None,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tensorboard")),
    )
    if fsdp_on_cpu:
        enable_fsdp_on_cpu(accelerator)
    return accelerator, accumulation


def enable_fsdp_on_cpu(accelerator: Accelerator) -> None:
    """FSDP on CPU processes: accelerate's state machine only selects its FSDP plugin for GPU-type process
    groups, while torch's FSDP2 shards over gloo on CPU too. Set the state accelerate would have set, with the
    plugin built from the same FSDP_* variables `accelerate launch --config_file fsdp.yaml` exports."""
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.utils import DistributedType

    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise RecipeError("FSDP on CPU is supported with fsdp_version: 2 (FSDP2) in the accelerate config only")
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


@contextlib.contextmanager
def whole_model_init(accelerator: Accelerator):
    """Build the model whole under ZeRO-3 unless the config sets zero3_init_flag. accelerate's ZeRO-3 plugin
    registers its config with transformers as soon as it exists, flag or not, and transformers then builds
    every `from_config` sub-model under deepspeed.zero.Init; VaryForCausalLM's weight init cannot touch such
    empty partitioned tensors ("index 0 is out of bounds for dimension 0")."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None or plugin.is_zero3_init_enabled():
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()  # registered again: transformers gathers ZeRO-3 shards where needed


def configure_sharding(accelerator: Accelerator, recipe: Recipe, accumulation: int, model: torch.nn.Module) -> None:
    """Before prepare(): make DeepSpeed and FSDP follow the recipe and the model.

    DeepSpeed: no DataLoader goes through prepare(), so it is told the micro-batch; accumulation and clipping
    come from the recipe too (a value in the accelerate config file would silently win). DeepSpeed then clips,
    scales the loss by 1/accumulation and averages gradients over processes itself.
    FSDP: accelerate wraps every class of _no_split_modules and fails on one the model lacks (a Vary-tiny has
    no CLIP): wrap the block classes this model has."""
    deepspeed = accelerator.state.deepspeed_plugin
    if deepspeed is not None:
        config = deepspeed.deepspeed_config
        config["train_micro_batch_size_per_gpu"] = recipe.train.batch_size
        config["gradient_accumulation_steps"] = accumulation
        config["train_batch_size"] = recipe.train.global_batch_size
        config["gradient_clipping"] = recipe.optim.max_grad_norm  # 0 = no clipping, as in the recipe
        zero = config.setdefault("zero_optimization", {})
        if zero.get("stage") == 3:  # the final model needs the full weights gathered from the shards
            zero["stage3_gather_16bit_weights_on_model_save"] = True
    fsdp = getattr(accelerator.state, "fsdp_plugin", None)  # absent unless FSDP runs
    if fsdp is not None and fsdp.transformer_cls_names_to_wrap is None:
        present = {type(m).__name__ for m in model.modules()}
        fsdp.transformer_cls_names_to_wrap = [n for n in model._no_split_modules if n in present]
