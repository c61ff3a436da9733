"""Training recipes: one YAML file per stage (configs/*.yaml), every value overridable from the command line.

    recipe = load_recipe("nano", ["optim.lr=3e-4", "train.max_steps=200"])

A recipe is five sections of plain dataclasses. Unknown keys are errors that name the file (or the command-line
override) and the closest known key: a typo must never be silently ignored in a week-long run.
`model.config` is the one free-form mapping: it holds VaryConfig overrides, checked by VaryConfig itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_CONFIGS = Path(__file__).resolve().parents[3] / "configs"  # configs/ beside src/ (editable install)
SCHEDULERS = ("cosine", "linear", "constant")
FREEZABLE = (
    "vision_vocab",
    "vision_encoder",
    "vision_downsample",
    "reading_head",
    "clip",
    "projector_vary",
    "projector_clip",
    "lm",
)
TOKENIZER_TYPES = ("bpe", "chars")  # what model.tokenizer_type may ask vary.train.init.train_tokenizer for


class RecipeError(ValueError):
    """A recipe file or override that cannot be used; the message names the file/key at fault."""


@dataclass
class ModelRecipe:
    preset: str = "nano"  # a vary.config.PRESETS name
    config: dict[str, Any] = field(default_factory=dict)  # VaryConfig overrides; sub-config dicts merge
    tokenizer: str | None = None  # folder; default: init.checkpoint's or init.llm's, else one trained on the data
    tokenizer_type: str = "bpe"  # what to train on the data when there is no folder: "bpe" or "chars" (1 token/char)
    freeze: list[str] = field(default_factory=list)  # FREEZABLE parts (vision_vocab = its two halves)
    gradient_checkpointing: bool = False


@dataclass
class InitRecipe:
    """Local weight folders (or files) to start from; any subset, none means training from scratch."""

    checkpoint: str | None = None  # a whole Vary model: ours, a training checkpoint, or an official one
    sam: str | None = None  # SAM image encoder: official sam_vit_b*.pth (image_encoder.*) or HF SamModel
    llm: str | None = None  # a Hugging Face causal-LM folder (OPT, Qwen2, LLaMA) or first-generation QWen
    clip: str | None = None  # a Hugging Face CLIP or CLIPVisionModel folder
    vary_tiny: str | None = None  # vision vocabulary for Vary-base from a Vary-tiny checkpoint (ours or official)


@dataclass
class SourceRecipe:
    path: str  # a folder of shards, or an official/LLaVA-format JSON file
    weight: float = 1.0  # relative sampling weight in the mixture
    images: str | None = None  # image folder of a JSON source (default: the JSON file's folder)


@dataclass
class DataRecipe:
    sources: list[SourceRecipe] = field(default_factory=list)
    max_length: int = 2048  # tokens, image tokens included; longer answers are truncated (and counted)
    augment: bool = True  # document augmentation (not applied to natural images)
    shuffle: bool = True
    num_workers: int = 0  # DataLoader worker processes per training process
    tokenizer_corpus: int = 20000  # samples whose texts train the BPE when no tokenizer folder is given
    eval_sources: list[SourceRecipe] = field(default_factory=list)  # held-out shard folders scored during training
    eval_samples: int = 64  # the first N samples of each eval source
    vision_features: bool = False  # read the frozen vision vocabulary's outputs (`vary train features`), not images
    # train the model's reading head too: each frame's character from the samples' glyph boxes (blocks' boxes=true,
    # vary.data.dataset.line_labels_for); samples without boxes train only the decoder
    line_labels: bool = False


@dataclass
class OptimRecipe:
    lr: float = 5e-5
    weight_decay: float = 0.0  # not applied to biases and norms
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    scheduler: str = "cosine"  # cosine (to min_lr) | linear | constant
    warmup_steps: int = 0
    min_lr: float = 0.0
    max_grad_norm: float = 1.0  # 0 disables clipping
    lr_scale: dict[str, float] = field(default_factory=dict)  # per-part lr multipliers, e.g. {vision_vocab: 0.1}
    reading_loss_weight: float = 1.0  # the reading head's loss (nats summed over frames) beside the answer tokens'


@dataclass
class TrainRecipe:
    output_dir: str = "runs/nano"
    batch_size: int = 8  # per process (device); accumulation fills the global batch
    global_batch_size: int = 8  # batch_size x processes x accumulation steps
    max_steps: int | None = None  # optimizer steps; or derived from epochs
    epochs: float | None = None  # passes over all sources' samples (used when max_steps is null)
    seed: int = 0
    mixed_precision: str = "no"  # no | bf16 | fp16 (GPU; bf16 also on a CPU with native bf16, else fp32)
    save_every: int = 500  # steps between checkpoints (a final one is always written)
    keep_last: int = 3  # checkpoints kept on disk
    eval_every: int = 500  # steps between held-out evaluations of data.eval_sources (one also runs at the end)


@dataclass
class Recipe:
    model: ModelRecipe = field(default_factory=ModelRecipe)
    init: InitRecipe = field(default_factory=InitRecipe)
    data: DataRecipe = field(default_factory=DataRecipe)
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    train: TrainRecipe = field(default_factory=TrainRecipe)
    source: str = field(default="<defaults>", compare=False)  # where it was read from (for messages)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# --- loading -------------------------------------------------------------------------------------------------
def find_recipe(name_or_path: str | Path) -> Path:
    """A path, or a recipe name looked up in ./configs and the repository's configs/."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for folder in _config_dirs():
        candidate = folder / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for d in _config_dirs() if d.is_dir() for p in d.glob("*.yaml")})
    raise RecipeError(f"no recipe file {name_or_path!r} (and no recipe of that name; known: {', '.join(known)})")


def _config_dirs() -> tuple[Path, ...]:
    return (Path.cwd() / "configs", REPO_CONFIGS)


def load_recipe(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe, apply `key.path=value` overrides (values parsed as YAML), validate every key."""
    path = find_recipe(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
    recipe = build(Recipe, raw, where=str(path))
    for override in overrides:
        recipe = apply_override(recipe, override)
    recipe.source = str(path)
    validate(recipe)
    return recipe


def validate(recipe: Recipe) -> None:
    """Value checks a dataclass type cannot express; errors name the recipe file and the key."""
    where, t, o = recipe.source, recipe.train, recipe.optim
    checks = [
        (t.mixed_precision in ("no", "bf16", "fp16"), f"train.mixed_precision must be no, bf16 or fp16, got {t.mixed_precision!r}"),
        (o.scheduler in SCHEDULERS, f"optim.scheduler must be one of {', '.join(SCHEDULERS)}, got {o.scheduler!r}"),
        (len(o.betas) == 2, f"optim.betas must be two numbers, got {o.betas}"),
        (t.batch_size >= 1 and t.global_batch_size >= t.batch_size,
         f"train.batch_size ({t.batch_size}) must be >= 1 and <= train.global_batch_size ({t.global_batch_size})"),
        (t.max_steps is None or t.max_steps >= 1, f"train.max_steps must be >= 1, got {t.max_steps}"),
        (t.max_steps is not None or (t.epochs or 0) > 0, "set train.max_steps or train.epochs"),
        (t.save_every >= 1 and t.keep_last >= 1, "train.save_every and train.keep_last must be >= 1"),
        (t.eval_every >= 1 and recipe.data.eval_samples >= 1, "train.eval_every and data.eval_samples must be >= 1"),
        (recipe.data.max_length >= 8, f"data.max_length must be >= 8, got {recipe.data.max_length}"),
        (all(s.weight > 0 for s in recipe.data.sources), "data.sources[*].weight must be > 0"),
        (not recipe.data.vision_features or not recipe.data.augment,
         "data.vision_features needs data.augment: false (augmented images would change the features)"),
        (not recipe.data.vision_features or "vision_vocab" in recipe.model.freeze
         or {"vision_encoder", "vision_downsample"} <= set(recipe.model.freeze),
         "data.vision_features needs model.freeze to hold vision_vocab: the features are its frozen outputs"),
        (not recipe.data.line_labels or not (recipe.data.augment or recipe.data.vision_features),
         "data.line_labels needs the plain images: data.augment: false and no data.vision_features"),
        (recipe.model.tokenizer_type in TOKENIZER_TYPES,
         f"model.tokenizer_type must be {' or '.join(TOKENIZER_TYPES)}, got {recipe.model.tokenizer_type!r}"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise RecipeError(f"{where}: {message}")
    for part, scale in recipe.optim.lr_scale.items():
        if part not in FREEZABLE or not isinstance(scale, int | float) or scale <= 0:
            raise RecipeError(f"{where}: optim.lr_scale.{part}={scale!r}: parts are {', '.join(FREEZABLE)}, scales > 0")
    for part in recipe.model.freeze:
        if part not in FREEZABLE:
            raise RecipeError(f"{where}: model.freeze has unknown part {part!r}; parts: {', '.join(FREEZABLE)}")


def apply_override(recipe: Recipe, override: str) -> Recipe:
    """`optim.lr=1e-4`, `data.sources=[{path: data/x}]`, `model.config.text_config.hidden_size=64`."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"override {override!r}: expected key.path=value, e.g. optim.lr=1e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as err:
        raise RecipeError(f"override {override!r}: value is not valid YAML ({err})") from err
    raw = recipe.to_dict()
    node: Any = raw
    parts = key.strip().split(".")
    free_form = parts[:2] == ["model", "config"]  # VaryConfig overrides: any nested key may be created
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict):
            raise RecipeError(f"override {override!r}: {'.'.join(parts[: i + 1])} is not a section")
        if part not in node and not (free_form and i >= 2):
            _unknown(part, node, f"command-line override {override!r}", ".".join(parts[:i]))
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    if not isinstance(node, dict):
        raise RecipeError(f"override {override!r}: {'.'.join(parts[:-1])} is not a section")
    node[parts[-1]] = value
    return build(Recipe, raw, where=f"command-line override {override!r}")


def build(cls: type, raw: Any, where: str, path: str = "") -> Any:
    """Dataclass `cls` from a mapping; unknown keys and wrong types raise RecipeError naming `where` + key."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: {path or 'the recipe'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            _unknown(key, fields, where, path)
        kwargs[key] = _coerce(value, hints[key], where, f"{path}.{key}" if path else key)
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise RecipeError(f"{where}: {path or 'recipe'}: {err}") from err


def _unknown(key: str, known, where: str, path: str) -> typing.NoReturn:
    full = f"{path}.{key}" if path else key
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise RecipeError(f"{where}: unknown key {full!r}{hint}; known keys here: {', '.join(sorted(known))}")


def _coerce(value: Any, hint: Any, where: str, path: str) -> Any:
    """Check/convert one value against its annotation (YAML 1.1 reads `5e-5` as a string: accept it)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where, path)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where, path)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise RecipeError(f"{where}: {path} must be a list, got {value!r}")
        return [_coerce(v, args[0], where, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: {path} must be a mapping, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: {path} must be true or false, got {value!r}")
        return value
    if hint in (int, float):
        try:
            number = hint(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or (hint is int and float(value) != number):
            raise RecipeError(f"{where}: {path} must be a{'n integer' if hint is int else ' number'}, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise RecipeError(f"{where}: {path} must be a string, got {value!r}")
        return str(value)
    return value


# --- resuming ------------------------------------------------------------------------------------------------
# What a resumed run really applies when changed: the run's length (the scheduler is rebuilt from it) and its
# bookkeeping. Anything else (optimizer settings, data, model, seed) comes back from the checkpoint or would
# silently mix two recipes in one run.
RESUMABLE_KEYS = ("train.max_steps", "train.epochs", "train.save_every", "train.keep_last", "train.eval_every",
                  "train.output_dir", "data.num_workers")  # fmt: skip


def check_resume(recipe: Recipe, run_dir: str | Path) -> None:
    """Refuse to resume `run_dir` with a recipe that differs from its recipe.yaml outside RESUMABLE_KEYS."""
    saved_path = Path(run_dir) / "recipe.yaml"
    if not saved_path.is_file():
        return
    saved = load_recipe(saved_path)
    changed = [
        f"{key} ({old!r} -> {new!r})"
        for key, (old, new) in _differences(saved.to_dict(), recipe.to_dict()).items()
        if key not in RESUMABLE_KEYS
    ]
    if changed:
        raise RecipeError(
            f"--resume: the recipe differs from {saved_path} in {', '.join(changed)}; a resumed run continues "
            f"with the checkpoint's state, so these would not apply as written. Resume with the same recipe "
            f"(only {', '.join(RESUMABLE_KEYS)} may change) or start a new run with another --out"
        )


def _differences(old: Any, new: Any, path: str = "") -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old, new)} for every leaf that differs (lists compared whole)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for key in dict.fromkeys([*old, *new]):
            out |= _differences(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        return out
    return {} if old == new else {path: (old, new)}
