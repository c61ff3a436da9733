"""Model specs -> local folders: a folder, a Hugging Face hub id `org/name[@revision]`, or a known short name.

    resolve_model("runs/nano/final")            # a folder that exists: used as is, always (it wins over a hub id)
    resolve_model("stepfun-ai/GOT-OCR2_0@main") # downloaded once into the standard HF cache, then read from there
    resolve_model("got-ocr2")                   # a REGISTRY name: its repo at its recorded revision

Downloads go through huggingface_hub's `snapshot_download`, so they resume, show progress bars, share the
standard cache (~/.cache/huggingface/hub, HF_HOME, HF_HUB_CACHE) and honour HF_ENDPOINT and HF_HUB_OFFLINE.
Only the files our loaders read are fetched (MODEL_FILES): never a repository's `*.py` remote code, which
nothing here executes anyway. Torch-free, so `vary models` starts fast.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vary.assets import bundled_model_name

# What the loaders read: config + generation config, weights (single or sharded, safetensors or .bin) and every
# tokenizer format in use (GPT-2 BPE for OPT, qwen.tiktoken for Qwen v1 / GOT, tokenizer.json for ours and the
# transformers GOT port) plus the transformers processor files of GOT-OCR-2.0-hf, and a reading head's word list.
MODEL_FILES = [
    "config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
    "*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "qwen.tiktoken", "chat_template.json", "chat_template.jinja", "lexicon.txt",
]  # fmt: skip
NEVER_DOWNLOAD = ["*.py"]  # remote code: a second guard in case a weight pattern ever matched a script

# org/name as the hub spells repository ids (letters, digits, -, _, .; no leading/trailing punctuation runs)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
REVISION = re.compile(r"[\w.\-/]{1,255}")  # a branch, tag or commit hash (refs/pr/1 included)
COMMIT = re.compile(r"[0-9a-f]{40}")  # a full commit hash: the only revision that cannot move


class HubError(ValueError):
    """A model spec that cannot be turned into a local folder; the message is one line that says what to do."""


class UnknownModelError(HubError):
    """Neither a folder, nor a hub id, nor a registry name (callers with more kinds of spec add theirs)."""


@dataclass(frozen=True)
class KnownModel:
    """One released member of the family: where it lives and what it is for (shown by `vary models`)."""

    name: str  # the short name users type
    repo_id: str
    revision: str  # a commit hash when one was verified; otherwise a branch (see the note above REGISTRY)
    architecture: str  # what config.json declares; says which loader reads it
    parameters: str
    languages: str
    license: str
    good_at: str
    # loader overrides for official checkpoints whose config.json cannot tell them (preprocessing, template)
    defaults: dict[str, str] = field(default_factory=dict)


# Revisions: this machine has no hub access, so no hash here was checked against the hub itself. got-ocr2-hf's
# is the commit a public lock file recorded from the hub's model_info(revision="main") on 2026-07-23
# (haseebraza715/failure-aware-ocr-rag, config/model_revisions.json). For the others, public code and issues
# searched for pinned hashes found none, so they track "main" rather than an invented hash (which would fail to
# download). Record each commit here once checked on the hub; until then users pin with NAME@COMMIT.
REVISION_NOTE = "revision 'main' = not pinned to a commit yet; pin one yourself with NAME@COMMIT"
REGISTRY: dict[str, KnownModel] = {
    model.name: model
    for model in [
        # The strongest released member: Vary's vision vocabulary + a 0.5B Qwen2 decoder, trained for OCR-2.0.
        # Official remote-code layout; we read its weights and qwen.tiktoken, never its modeling_GOT.py.
        KnownModel(
            name="got-ocr2",
            repo_id="stepfun-ai/GOT-OCR2_0",
            revision="main",
            architecture="GOTQwenForCausalLM (official GOT)",
            parameters="560 M",
            languages="en, zh",
            license="Apache-2.0",
            good_at="page OCR as plain text or formatted (markdown/LaTeX: tables, formulas), scene text, charts, "
            "sheet music; Fox pages ED 0.035 en / 0.038 zh",
        ),
        # The same weights in transformers' own layout (GotOcr2ForConditionalGeneration): the port the
        # transformers team maintains, with a tokenizer.json instead of the tiktoken file.
        KnownModel(
            name="got-ocr2-hf",
            repo_id="stepfun-ai/GOT-OCR-2.0-hf",
            revision="d3017ef2c2c1395888c8d635c5e0508bcb0ac78d",
            architecture="GotOcr2ForConditionalGeneration (transformers)",
            parameters="560 M",
            languages="en, zh",
            license="Apache-2.0",
            good_at="as got-ocr2, in the layout transformers maintains (no remote code in the repository at all)",
        ),
        # Vary-base at small scale: Qwen-1.8B (first generation) + a Vary-tiny-style vocabulary + CLIP-L. Its demo
        # preprocesses with bicubic resize and CLIP mean/std (VARY.md), which its config.json does not record.
        # The Vary-toy README links Haoran-megvii/Vary-toy, an older name of this repository.
        KnownModel(
            name="vary-toy",
            repo_id="HaoranWei/Vary-toy",
            revision="main",
            architecture="varyQwenForCausalLM (official Vary)",
            parameters="1.8 B",
            languages="en, zh",
            license="research use only (Vary's release notice; Qwen-1.8B license)",
            good_at="document OCR and markdown, chart -> python dict, general image questions, object grounding",
            defaults={"image_norm": "clip"},
        ),
        # The only Vary-tiny the authors released (2024-03, "a PDF-dense OCR and object detection version"):
        # SAM-B + OPT-125M, text-prompted with the Vicuna v1 template and CLIP preprocessing
        # (run_opt_with_text.py), neither recorded in its config.json. Vary-base (Qwen-7B) was released on
        # Baidu Netdisk only and has no hub id; OneChart (Vary-tiny + a number head) has weights our loader
        # cannot place; so neither is listed.
        KnownModel(
            name="vary-tiny",
            repo_id="HaoranWei/Vary-tiny-opt125M",
            revision="main",
            architecture="varyOPTForCausalLM (official Vary-tiny)",
            parameters="220 M",
            languages="en",
            license="research use only (Vary's release notice; OPT-125M license)",
            good_at="dense OCR of English PDF pages; small enough for a CPU",
            defaults={"image_norm": "clip", "template": "vicuna_v1"},
        ),
    ]
}


# --- parsing ------------------------------------------------------------------------------------------------
def parse_spec(spec: str) -> tuple[str, str | None, KnownModel | None]:
    """`name[@revision]` -> (repo_id, revision, registry entry or None). Raises HubError for anything else."""
    name, _, revision = spec.strip().partition("@")
    if "@" in spec and not REVISION.fullmatch(revision):
        raise HubError(f"{spec!r}: bad revision {revision!r} (a branch, tag or commit hash after '@')")
    known = REGISTRY.get(name.lower())
    if known is not None:
        return known.repo_id, revision or known.revision, known
    if HUB_ID.fullmatch(name) and ".." not in name:
        return name, revision or None, next((m for m in REGISTRY.values() if m.repo_id == name), None)
    if _looks_like_path(name):
        raise UnknownModelError(f"{spec}: no such model folder")
    raise UnknownModelError(
        f"unknown model {spec!r}: not a folder, a hub id (org/name[@revision]) or a known name "
        f"({', '.join(REGISTRY)}; see `vary models`)"
    )


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name or ":" in name


def known_model(spec: str | Path | None) -> KnownModel | None:
    """The registry entry `spec` names: a short name, its repo id, or a cached snapshot folder of that repo."""
    if spec is None:
        return None
    path = Path(spec).expanduser()
    if path.is_dir():
        repo_id = snapshot_repo(path)
        return next((m for m in REGISTRY.values() if m.repo_id == repo_id), None) if repo_id else None
    try:
        return parse_spec(str(spec))[2]
    except HubError:
        return None


def loader_defaults(spec: str | Path | None) -> dict[str, Any]:
    """Loading overrides the registry records for the model `spec` names ({} for any other model)."""
    known = known_model(spec)
    if known is None:
        return {}
    defaults: dict[str, Any] = {k: v for k, v in known.defaults.items() if k != "image_norm"}
    if "image_norm" in known.defaults:
        defaults |= image_norm_overrides(known.defaults["image_norm"])
    return defaults


def image_norm_overrides(name: str) -> dict[str, Any]:
    """Official checkpoints' high-res preprocessing, which their config.json does not record (VARY.md):
    'imagenet' (bilinear, the Vary-base demo) or 'clip' (bicubic; Vary-tiny-opt125M, Vary-toy, GOT)."""
    from vary.config import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

    norms = {"imagenet": dict(image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, image_resample="bilinear"),
             "clip": dict(image_mean=CLIP_MEAN, image_std=CLIP_STD, image_resample="bicubic")}  # fmt: skip
    if name not in norms:
        raise ValueError(f"image norm must be one of {sorted(norms)}, got {name!r}")
    return norms[name]


# --- resolving ----------------------------------------------------------------------------------------------
def resolve_model(spec: str | Path) -> Path:
    """A local model folder for `spec`: the folder itself, or the cached/downloaded hub snapshot.

    A Path, or a string that is plainly a path (./x, /x, ~/x, a/b/c), comes back as a Path even when missing:
    the loader then names it in its "not a model folder" error, as for any bad folder.
    """
    path = Path(spec).expanduser()
    if path.is_dir() or isinstance(spec, Path) or _looks_like_path(str(spec)):
        return path  # a real folder always wins, even one named like org/name
    repo_id, revision, _ = parse_spec(str(spec))
    return download(repo_id, revision)


def download(repo_id: str, revision: str | None = None) -> Path:
    """The snapshot of `repo_id` at `revision` in the HF cache, downloading what is missing (only MODEL_FILES)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    ref = f"{repo_id}@{revision}" if revision else repo_id
    endpoint, cache = constants.ENDPOINT, _home(constants.HF_HUB_CACHE)
    try:
        folder = snapshot_download(
            repo_id, revision=revision, allow_patterns=MODEL_FILES, ignore_patterns=NEVER_DOWNLOAD
        )
    except RevisionNotFoundError:
        raise HubError(f"cannot download {ref}: {repo_id} has no revision {revision!r} on {endpoint}") from None
    except RepositoryNotFoundError:
        raise HubError(
            f"cannot download {ref}: there is no local folder of that name and {endpoint} has no model {repo_id} "
            "(or it is private or gated: log in with `hf auth login`); check the id, or pass a local folder"
        ) from None
    except IncompleteSnapshotError:
        raise HubError(
            f"cannot load {ref}: its copy in the cache ({cache}) is incomplete and {endpoint} cannot be reached; "
            "rerun where the hub is reachable to finish the download (it resumes)"
        ) from None
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise HubError(
                f"cannot load {ref}: HF_HUB_OFFLINE is set and it is not in the cache ({cache}); download it "
                "without HF_HUB_OFFLINE on a machine with access, or pass a local folder"
            ) from None
        raise HubError(
            f"cannot download {ref}: no connection to {endpoint} and it is not in the cache ({cache}); download "
            "it on a machine with access or pass a local folder"
        ) from None
    except HfHubHTTPError as err:  # e.g. the hub answered 5xx mid-download
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HubError(f"cannot download {ref} from {endpoint}: {reason}; retry later (downloads resume)") from None
    return Path(folder)


def _home(path: str | Path) -> str:
    """`path` with the home folder written as ~ (shorter error lines)."""
    path, home = Path(path), Path.home()
    return "~/" + str(path.relative_to(home)) if path.is_relative_to(home) else str(path)


def snapshot_repo(path: str | Path) -> str | None:
    """`org/name` when `path` is a snapshot folder of the HF cache (models--org--name/snapshots/<commit>)."""
    parts = Path(path).resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    return None


def model_name(path: str | Path) -> str:
    """A readable name for a resolved folder: `org/name@abc1234` for a hub snapshot, `bundled:NAME` for the
    model inside the package (its MODEL_CARD.md's title), else the folder name."""
    if (bundled := bundled_model_name(path)) is not None:
        return f"bundled:{bundled}"
    repo_id = snapshot_repo(path)
    return f"{repo_id}@{Path(path).resolve().name[:7]}" if repo_id else Path(path).name


def registry_rows() -> list[dict[str, Any]]:
    """The registry as plain dicts (what `vary models --json` prints)."""
    return [asdict(model) | {"pinned": COMMIT.fullmatch(model.revision) is not None} for model in REGISTRY.values()]
