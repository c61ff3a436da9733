"""The training loop: one code path for one CPU, one GPU, DDP, FSDP or DeepSpeed, through Hugging Face accelerate.

    python -m vary train run nano                                                   # one process
    torchrun --nproc_per_node 2 -m vary train run nano                              # N CPU processes (gloo)
    accelerate launch --config_file configs/accelerate/deepspeed-zero2.yaml -m vary train run vary-tiny
                                             # ZeRO-2/3 or FSDP2 (fsdp.yaml), on CPU (gloo) or GPUs

One optimizer step = `global_batch_size` samples = batch_size x processes x accumulation micro-batches.
The loss is the mean over *all answer tokens of the global batch*: each micro-batch contributes its token
loss sum divided by the global token count (all-reduced before the step). So the gradient is the same
whatever the split over processes and micro-batches, and long dense pages weigh as many tokens as they
hold instead of as much as a five-word caption (mean-of-means favours short targets).

Run folder:  recipe.yaml, log.jsonl (one line per step), eval.jsonl (held-out losses, with data.eval_sources),
             tensorboard/, init_report.json, tokenizer/
             checkpoint-0000100/ (accelerate state: model, optimizer, scheduler, RNG per process; plus
             trainer_state.json, config.json and the tokenizer, so `vary.load(checkpoint)` works; a
             DeepSpeed or FSDP checkpoint holds that engine's sharded format instead)
             model/ (the final model, save_pretrained + tokenizer)
Checkpoints are written to a hidden temporary folder and renamed when complete; the last `keep_last` stay.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate.utils import gather_object, set_seed
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import get_scheduler

from vary.config import PRESETS
from vary.data.augment import augment_document
from vary.data.dataset import Collator, DataError, MixtureSampler, VaryTrainDataset, open_source
from vary.modeling.lexicon import LEXICON_FILE
from vary.modeling.processor import VaryProcessor
from vary.modeling.tokenizer import check_image_tokens, extend_char_tokenizer, load_tokenizer
from vary.train.accelerate_setup import configure_sharding, make_accelerator, whole_model_init
from vary.train.checkpoint import list_checkpoints, load_checkpoint, remove_unfinished, save_checkpoint
from vary.train.features import features_path, vision_fingerprint
from vary.train.init import build_model, format_report, save_report, tokenizer_folder, train_tokenizer
from vary.train.losses import answer_tokens, heldout_losses, token_loss_sum
from vary.train.recipes import Recipe, RecipeError

LOG_FILE = "log.jsonl"
EVAL_FILE = "eval.jsonl"


class OutOfMemory(RuntimeError):
    """A batch that does not fit; the message says what to change."""


@dataclass
class TrainState:
    """Everything besides accelerate's state that a resumed run needs (the data position is `step`)."""

    step: int = 0  # optimizer steps done
    samples: int = 0  # samples trained on (skipped ones excluded)
    tokens: int = 0  # answer tokens trained on
    truncated: int = 0  # samples cut at data.max_length
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count (corrupt, too_long, no_image...)
    elapsed: float = 0.0  # seconds of training, over all resumptions


# --- small helpers -------------------------------------------------------------------------------------------
def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(err).lower()
    return any(
        s in text for s in ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory")
    )


def oom_advice(recipe: Recipe, accumulation: int, device: str) -> str:
    t = recipe.train
    smaller = max(1, t.batch_size // 2)
    lines = [
        f"out of memory on {device} with train.batch_size={t.batch_size} and data.max_length={recipe.data.max_length}. Try:",
        f"  - a smaller micro-batch: train.batch_size={smaller} (train.global_batch_size={t.global_batch_size} is kept:"
        f" gradient accumulation goes from {accumulation} to {accumulation * t.batch_size // smaller} steps)",
    ]
    if not recipe.model.gradient_checkpointing:
        lines.append("  - gradient checkpointing: model.gradient_checkpointing=true (less memory, ~30% slower)")
    lines.append(
        f"  - shorter sequences: data.max_length={max(64, recipe.data.max_length // 2)} (long answers are truncated)"
    )
    if device != "cpu" and t.mixed_precision == "no":
        lines.append("  - mixed precision on GPU: train.mixed_precision=bf16")
    if device != "cpu":
        lines.append("  - shard the model over GPUs: accelerate launch --config_file with FSDP or DeepSpeed ZeRO-2/3")
    return "\n".join(lines)


def read_log(path: Path) -> list[dict]:
    """JSONL records, the last one per step (a resumed run rewrites steps after its checkpoint)."""
    if not path.is_file():
        return []
    by_step = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


# --- the trainer ---------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, recipe: Recipe, resume: bool | str | Path = False,
                 on_checkpoint: Callable[[Path, int], None] | None = None, progress: bool = True):  # fmt: skip
        self.recipe, self.resume, self.on_checkpoint, self.progress = recipe, resume, on_checkpoint, progress
        self.out = Path(recipe.train.output_dir)
        self.state = TrainState()

    # --- set-up -----------------------------------------------------------------------------------------------
    def setup(self) -> None:
        r = self.recipe
        self.accelerator, self.accumulation = make_accelerator(r, self.out)
        self.main = self.accelerator.is_main_process
        if not self.resume and list_checkpoints(self.out):
            raise RecipeError(
                f"{self.out} already holds checkpoints of a run: pass --resume to continue it, or choose another "
                "train.output_dir (--out) for a new run"
            )
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_unfinished(self.out)
        set_seed(r.train.seed)
        self.sources = self._open_sources()
        self.tokenizer = self._tokenizer()
        with whole_model_init(self.accelerator):
            self.model, reports = build_model(r, self.tokenizer)
        c = self.model.config
        ids = {"<img>": c.image_start_token_id, "</img>": c.image_end_token_id, "<imgpad>": c.image_patch_token_id}
        check_image_tokens(self.tokenizer, ids, source="the training tokenizer")
        if r.data.line_labels and not c.reading_head:
            raise RecipeError(f"{r.source}: data.line_labels trains a reading head, but this model has none "
                              "(model.config.reading_head: true, with vision_encoder: conv)")  # fmt: skip
        self._freeze()
        self.feature_files = self._feature_files()
        if self.accelerator.device.type == "cpu":  # a frozen vision vocabulary then encodes ~1.4x faster
            self.model.enable_fast_cpu_path()  # (eval mode and no grad only: a trained one keeps the plain path)
        if r.model.gradient_checkpointing:
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if self.main:
            save_report(reports, self.out / "init_report.json")
            (self.out / "recipe.yaml").write_text(r.to_yaml(), encoding="utf-8")
            self._print(format_report(reports))
            self._print(self._describe())
        self.optimizer = self._optimizer()
        self.max_steps = self._max_steps()
        self.scheduler = get_scheduler(
            {"cosine": "cosine_with_min_lr", "linear": "linear", "constant": "constant_with_warmup"}[r.optim.scheduler],
            self.optimizer,
            num_warmup_steps=r.optim.warmup_steps,
            num_training_steps=self.max_steps,
            scheduler_specific_kwargs={"min_lr": r.optim.min_lr} if r.optim.scheduler == "cosine" else None,
        )
        configure_sharding(self.accelerator, r, self.accumulation, self.model)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        # The scheduler is stepped by hand once per optimizer step (accelerate's wrapper would step it once
        # per process); registering it puts it in every checkpoint.
        self.accelerator.register_for_checkpointing(self.scheduler)
        self._maybe_resume()
        self.processor = VaryProcessor(self.model_config, self.tokenizer)
        self.loader = self._loader()
        self.eval_sets = self._eval_sets()
        self.accelerator.init_trackers("run", init_kwargs={"tensorboard": {"purge_step": self.state.step + 1}})

    def _print(self, text: str) -> None:
        if self.main and self.progress:
            tqdm.write(text)

    def _open_sources(self) -> list:
        r = self.recipe
        if not r.data.sources:
            raise DataError(f"{r.source}: data.sources is empty; give a shard folder (--data DIR) or a LLaVA JSON")
        sources = [open_source(s.path, s.images, progress=self.main and self.progress) for s in r.data.sources]
        for source in sources:
            for warning in source.warnings:
                self._print(f"warning: {warning}")
        return sources

    def _tokenizer(self):
        folder = tokenizer_folder(self.recipe)
        if folder is None:  # train a BPE on the data once; later runs (and resumes) reuse it
            folder = self.out / "tokenizer"
            with self.accelerator.main_process_first():
                if self.main and not (folder / "tokenizer.json").is_file():
                    vocab = int(self._preset_text().get("vocab_size", 8192))
                    limit = self.recipe.data.tokenizer_corpus
                    texts = [t for s in self.sources for t in s.texts(limit) if t]
                    kind = self.recipe.model.tokenizer_type
                    self._print(f"training a {kind} tokenizer (<= {vocab} tokens) on {len(texts)} texts -> {folder}")
                    train_tokenizer(texts, vocab, folder, kind)
            return load_tokenizer(folder)  # trained on this data: what it left out was beyond its vocab_size
        tokenizer = load_tokenizer(folder)
        # A character tokenizer from a checkpoint may lack characters of this run's data (e.g. "{" when charts
        # join text blocks): add them rather than train on <unk>. Deterministic, so every process and a resume
        # get the same ids.
        texts = (t for s in self.sources for t in s.texts(self.recipe.data.tokenizer_corpus))
        if added := extend_char_tokenizer(tokenizer, texts):
            self._print(f"tokenizer: added {len(added)} characters the data uses: {''.join(added)!r}")
        return tokenizer

    def _preset_text(self) -> dict:
        return {**PRESETS[self.recipe.model.preset]["text_config"], **self.recipe.model.config.get("text_config", {})}

    def _part(self, part: str, key: str) -> list[torch.nn.Parameter]:
        """The parameters of a part named in the recipe under `key` (model.freeze, optim.lr_scale)."""
        params = self.model.part_parameters().get(part)
        if params is None:
            raise RecipeError(f"{self.recipe.source}: {key} names {part!r} but this model has no such part")
        return params

    def _freeze(self) -> None:
        for part in self.recipe.model.freeze:
            for p in self._part(part, "model.freeze"):
                p.requires_grad_(False)

    def _feature_files(self) -> list[Path] | None:
        """With data.vision_features: each source's `vary train features` file for this vision vocabulary."""
        if not self.recipe.data.vision_features:
            return None
        fingerprint = vision_fingerprint(self.model)  # the model is whole here (before accelerate shards it)
        pairs = zip(self.recipe.data.sources, self.sources, strict=True)
        return [features_path(recipe.path, source, fingerprint) for recipe, source in pairs]

    def _describe(self) -> str:
        r, counts = self.recipe, self.model.num_parameters_by_part()
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        parts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items())
        return (
            f"model: {r.model.preset} ({parts}; trainable {trainable / 1e6:.2f}M)\n"
            f"data: {', '.join(f'{s.path} ({len(src)} samples, weight {s.weight:g})' for s, src in zip(r.data.sources, self.sources, strict=True))}\n"
            f"batch: {r.train.global_batch_size} = {r.train.batch_size} per process x {self.accelerator.num_processes} "
            f"process(es) x {self.accumulation} accumulation; device {self.accelerator.device}, "
            f"precision {self.accelerator.mixed_precision}"
        )

    def _optimizer(self) -> torch.optim.Optimizer:
        o = self.recipe.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise RecipeError(f"{self.recipe.source}: model.freeze leaves no trainable parameter")
        scale_of = {}  # parameter -> lr multiplier of its part (optim.lr_scale)
        for part, scale in o.lr_scale.items():
            for p in self._part(part, "optim.lr_scale"):
                scale_of[p] = float(scale)
        groups: dict[tuple[float, bool], list] = {}
        for p in params:  # matrices decay; biases and norm scales do not
            groups.setdefault((scale_of.get(p, 1.0), p.ndim >= 2), []).append(p)
        return torch.optim.AdamW(
            [{"params": ps, "lr": o.lr * scale, "lr_scale": scale, "weight_decay": o.weight_decay if decay else 0.0}
             for (scale, decay), ps in groups.items()],
            lr=o.lr, betas=tuple(o.betas), eps=o.eps,
        )  # fmt: skip

    def _max_steps(self) -> int:
        t = self.recipe.train
        if t.max_steps is not None:
            return t.max_steps
        total = sum(len(s) for s in self.sources)
        return max(1, math.ceil(t.epochs * total / t.global_batch_size))

    def _loader(self) -> DataLoader:
        r, acc = self.recipe, self.accelerator
        processor = self.processor
        augment = augment_document if r.data.augment else None
        self.dataset = VaryTrainDataset(self.sources, processor, r.data.max_length, augment, seed=r.train.seed,
                                        features=self.feature_files, line_labels=r.data.line_labels)  # fmt: skip
        sampler = MixtureSampler(
            [len(s) for s in self.sources], [s.weight for s in r.data.sources], seed=r.train.seed,
            batch_size=r.train.batch_size, num_processes=acc.num_processes, process_index=acc.process_index,
            accumulation=self.accumulation, start_step=self.state.step, max_steps=self.max_steps, shuffle=r.data.shuffle,
        )  # fmt: skip
        if r.data.num_workers:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=Collator(self.dataset, pad_token_id=self.model_config.text_config.pad_token_id or 0),
            num_workers=r.data.num_workers,
            persistent_workers=r.data.num_workers > 0,
        )

    def _eval_sets(self) -> dict[str, VaryTrainDataset]:
        """data.eval_sources by folder name (a clash gets its position appended), without augmentation."""
        sets = {}
        for i, s in enumerate(self.recipe.data.eval_sources):
            name = Path(s.path).name if Path(s.path).name not in sets else f"{Path(s.path).name}-{i}"
            source = open_source(s.path, s.images, progress=False)
            sets[name] = VaryTrainDataset([source], self.processor, self.recipe.data.max_length)
        return sets

    def evaluate(self) -> dict:
        """Held-out loss of each eval source, with its own images and with other samples' images (the gap
        shows whether the model reads; see vary.train.losses). Written to eval.jsonl and TensorBoard.

        Every process scores the same samples: under FSDP and ZeRO-3 all of them must run each forward, and
        the sets are small."""
        r, acc = self.recipe, self.accelerator
        record: dict = {"step": self.state.step}
        self.model.eval()
        for name, dataset in self.eval_sets.items():
            losses = heldout_losses(self.model, dataset, r.data.eval_samples, r.train.batch_size,
                                    device=acc.device, autocast=acc.autocast)  # fmt: skip
            record |= {f"{name}/{key}": round(value, 5) for key, value in losses.items()}
        self.model.train()
        if self.main:
            with open(self.out / EVAL_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            acc.log({f"eval/{k}": v for k, v in record.items() if k != "step"}, step=record["step"])
            parts = [f"{n} {record[f'{n}/loss']:.4f} (other images {record[f'{n}/loss_other_images']:.4f})"
                     for n in self.eval_sets]  # fmt: skip
            self._print(f"eval at step {record['step']}: " + ", ".join(parts))
        return record

    @property
    def model_config(self):
        return self.accelerator.unwrap_model(self.model).config

    # --- checkpoints --------------------------------------------------------------------------------------------
    def _maybe_resume(self) -> None:
        if not self.resume:
            if self.main and (self.out / LOG_FILE).exists():
                (self.out / LOG_FILE).unlink()  # a fresh run in an old folder starts a fresh log
            return
        path = Path(self.resume) if not isinstance(self.resume, bool) else None
        if path is None:
            found = list_checkpoints(self.out)
            if not found:
                self._print(f"--resume: no checkpoint in {self.out}; starting from step 0")
                return
            path = found[-1]
        self.state = TrainState(**load_checkpoint(self.accelerator, path))
        if self.state.step > self.max_steps:
            raise DataError(f"{path}: checkpoint at step {self.state.step} is past train.max_steps={self.max_steps}")
        if self.main:  # drop log lines of steps after the checkpoint: they are about to be redone
            kept = [rec for rec in read_log(self.out / LOG_FILE) if rec["step"] <= self.state.step]
            (self.out / LOG_FILE).write_text("".join(json.dumps(rec) + "\n" for rec in kept), encoding="utf-8")
        self._print(f"resumed from {path} at step {self.state.step}")

    def save_checkpoint(self) -> Path:
        return save_checkpoint(self.accelerator, self.out, self.state.step, asdict(self.state), self.model_config,
                               self.tokenizer, self.recipe.train.keep_last)  # fmt: skip

    def save_model(self) -> Path:
        """The final model as a plain `save_pretrained` folder (gathered from FSDP/ZeRO-3 shards if need be)."""
        folder = self.out / "model"
        state_dict = self.accelerator.get_state_dict(self.model)
        if self.main:
            self.accelerator.unwrap_model(self.model).save_pretrained(folder, state_dict=state_dict)
            self.tokenizer.save_pretrained(folder)
            source = tokenizer_folder(self.recipe)  # a reading head's word list stays with its tokenizer
            if source is not None and (source / LEXICON_FILE).is_file():
                shutil.copy2(source / LEXICON_FILE, folder / LEXICON_FILE)
        self.accelerator.wait_for_everyone()
        return folder

    # --- the loop ---------------------------------------------------------------------------------------------
    def train(self) -> TrainState:
        if not hasattr(self, "accelerator"):
            self.setup()
        r, acc = self.recipe, self.accelerator
        self.model.train()
        batches = iter(self.loader)
        bar = tqdm(total=self.max_steps, initial=self.state.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (self.main and self.progress), mininterval=1.0)  # fmt: skip
        while self.state.step < self.max_steps:
            started = time.perf_counter()
            micro = [next(batches) for _ in range(self.accumulation)]
            record = self.step(micro)
            record["step_time"] = time.perf_counter() - started
            record["samples_per_s"] = record["samples"] / record["step_time"]
            self.state.elapsed += record["step_time"]
            record["time"] = self.state.elapsed
            self._log(record)
            bar.update(1)
            bar.set_postfix(
                loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", samples_s=f"{record['samples_per_s']:.1f}"
            )
            last = self.state.step == self.max_steps
            if self.eval_sets and (self.state.step % r.train.eval_every == 0 or last):
                self.evaluate()
            if self.state.step % r.train.save_every == 0 or last:
                path = self.save_checkpoint()
                if self.on_checkpoint is not None:
                    self.on_checkpoint(path, self.state.step)
        bar.close()
        self.save_model()
        acc.end_training()
        return self.state

    def step(self, micro: list[dict]) -> dict:
        """One optimizer step over this process's micro-batches; returns the step's log record."""
        acc = self.accelerator
        stats = [mb.pop("stats") for mb in micro]
        local = torch.tensor(
            [sum(answer_tokens(mb["labels"]) for mb in micro), sum(s["samples"] for s in stats),
             sum(s["truncated"] for s in stats)], dtype=torch.float64, device=acc.device,
        )  # fmt: skip
        tokens, samples, truncated = acc.reduce(local, reduction="sum").tolist()
        skipped = Counter()
        for s in stats:
            skipped.update(s["skipped"])
            for note in s["skip_notes"]:
                self._print(f"skipped sample: {note}")
        # Gradient of (global token-loss sum / global token count). DDP averages gradients over processes and
        # accelerate divides by the accumulation steps: multiply both back.
        scale = acc.num_processes * self.accumulation / max(tokens, 1.0)
        loss_sum = torch.zeros((), device=acc.device, dtype=torch.float64)
        self._reading = [0.0, 0]  # this process's reading-head loss sum and character frames (logged per frame)
        grad_norm = None
        try:  # the optimizer's first step allocates its state: it can run out of memory too
            for mb in micro:
                with acc.accumulate(self.model):
                    loss_sum += self._micro_step(mb, scale).double()
                    if acc.sync_gradients and self.recipe.optim.max_grad_norm > 0:
                        grad_norm = acc.clip_grad_norm_(self.model.parameters(), self.recipe.optim.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
        except (RuntimeError, MemoryError) as err:
            if is_out_of_memory(err):
                raise OutOfMemory(oom_advice(self.recipe, self.accumulation, acc.device.type)) from err
            raise
        lr = self.scheduler.get_last_lr()[0] / self.optimizer.param_groups[0].get("lr_scale", 1.0)  # the recipe lr
        self.scheduler.step()
        loss_sum = acc.reduce(loss_sum, reduction="sum")
        all_skipped = self._reduce_counts(skipped)
        st = self.state
        st.step += 1
        st.samples += int(samples)
        st.tokens += int(tokens)
        st.truncated += int(truncated)
        for reason, n in all_skipped.items():
            st.skipped[reason] = st.skipped.get(reason, 0) + n
        reading = {}
        if self._reading[1]:  # this process's figure: the reading head is a side objective, not worth a reduce
            reading = {"reading_loss": round(self._reading[0] / self._reading[1], 5)}
        return reading | {
            "step": st.step, "loss": float(loss_sum) / max(tokens, 1.0), "lr": lr,
            "grad_norm": None if grad_norm is None else float(grad_norm), "samples": int(samples),
            "tokens": int(tokens), "truncated": int(truncated), "skipped": dict(all_skipped),
            "epoch": st.samples / max(1, sum(len(s) for s in self.sources)),
        }  # fmt: skip

    def _micro_step(self, mb: dict, scale: float) -> torch.Tensor:
        device = self.accelerator.device
        inputs = {k: v.to(device) for k, v in mb.items()}
        labels = inputs.pop("labels")
        out = self.model(**inputs, use_cache=False)
        loss = token_loss_sum(out.logits, labels)
        reading = out.get("reading_loss")
        if reading is not None:  # the reading head's loss (summed over frames) joins the answer tokens' loss sum
            self._reading[0] += float(reading.detach())
            self._reading[1] += out["reading_chars"]
            self.accelerator.backward((loss + self.recipe.optim.reading_loss_weight * reading) * scale)
        else:
            self.accelerator.backward(loss * scale)
        return loss.detach()

    def _reduce_counts(self, counts: Counter) -> dict[str, int]:
        if self.accelerator.num_processes == 1:
            return dict(counts)
        total = Counter()
        for c in gather_object([dict(counts)]):
            total.update(c)
        return dict(total)

    def _log(self, record: dict) -> None:
        if not self.main:
            return
        with open(self.out / LOG_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in record.items() if isinstance(v, int | float) and k != "step"}
        self.accelerator.log({f"train/{k}": v for k, v in scalars.items()}, step=record["step"])


def train(recipe: Recipe, resume: bool | str | Path = False, **kwargs) -> TrainState:
    """Run a recipe to the end; returns the final TrainState (the run folder is recipe.train.output_dir)."""
    return Trainer(recipe, resume=resume, **kwargs).train()
