"""Hub ids and known names: `--model org/name[@rev]` downloads through huggingface_hub from a loopback stand-in.

The stand-in (FakeHub) is a small threaded http.server on 127.0.0.1 that this module starts itself; it answers
the four calls huggingface_hub's snapshot_download makes (revision info, file tree, HEAD/GET resolve). It serves
repositories built by the functions in REPO_BUILDERS: a tiny random Vary-tiny in the official layout
(varyOPTForCausalLM, official key names) and a tiny random GOT-OCR2 as stepfun-ai/GOT-OCR2_0 ships it, each with a
remote-code .py file beside it. Every test that uses `served` runs per builder, and compares what the hub gave
against vary.load_model on the served folder itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import vary
from conftest import TOKENIZER_TEXT, tiny_config
from test_infer_documents import make_png
from test_train_init import official_sam_names
from vary.cli import app
from vary.modeling import hub
from vary.modeling.official import load_official
from vary.modeling.tokenizer import train_bpe_tokenizer
from vary.modeling.vary import VaryForCausalLM

REPO = "tiny-org/tiny-vary"
REMOTE_CODE = "modeling_vary.py"
NOT_FOR_LOADING = {REMOTE_CODE, "README.md", "training_args.bin"}  # served, and never downloaded
FAST = ["--max-new-tokens", "12"]


# --- repositories the stand-in serves ---------------------------------------------------------------------
def build_official_vary_tiny(folder: Path, seed: int) -> Path:
    """A tiny random Vary-tiny as the official code saves it: official key names, official config.json."""
    torch.manual_seed(seed)
    tokenizer = train_bpe_tokenizer(TOKENIZER_TEXT * 20, vocab_size=400)
    model = VaryForCausalLM(tiny_config(vocab_size=len(tokenizer))).eval()
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("vision_vocab.encoder."):
            ((name, _),) = official_sam_names({key.removeprefix("vision_vocab.encoder."): value}).items()
        elif key.startswith("vision_vocab."):
            name = key.removeprefix("vision_vocab.")  # net_2 / net_3
        else:
            state[re.sub(r"^projector_vary\.", "model.mm_projector.", re.sub(r"^language_model\.", "", key))] = (
                value.clone()
            )
            continue
        state["model.vision_tower_2." + name] = value.clone()
    folder.mkdir(parents=True)
    save_file(state, folder / "model.safetensors")
    c, t = model.config, model.config.text_config
    config = {
        "architectures": ["varyOPTForCausalLM"], "model_type": "vary", "hidden_size": t.hidden_size,
        "num_hidden_layers": t.num_hidden_layers, "num_attention_heads": t.num_attention_heads, "ffn_dim": t.ffn_dim,
        "word_embed_proj_dim": t.word_embed_proj_dim, "do_layer_norm_before": True, "activation_function": "relu",
        "pad_token_id": t.pad_token_id, "bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_id,
        "im_start_token": c.image_start_token_id, "im_end_token": c.image_end_token_id,
        "im_patch_token": c.image_patch_token_id, "image_token_len": c.image_token_len,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(folder)
    add_files_the_loader_never_needs(folder)
    reloaded = load_official(folder)  # the builder itself is checked: the official loader gives our weights back
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    return folder


def build_official_got(folder: Path, seed: int) -> Path:
    """A tiny random GOT-OCR2 as stepfun-ai/GOT-OCR2_0 ships it: GOTQwenForCausalLM keys, qwen.tiktoken."""
    from test_got import write_official_got

    write_official_got(folder, seed)
    # A tiny random GOT with tied embeddings answers "\n" forever whatever its seed (the last prompt token wins);
    # a random final norm makes two seeds read an image differently, so the revision check can fail.
    weights = load_file(folder / "model.safetensors")
    norm = weights["model.norm.weight"]
    weights["model.norm.weight"] = 3 * torch.randn(norm.shape, generator=torch.Generator().manual_seed(seed))
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    add_files_the_loader_never_needs(folder)
    return folder


def add_files_the_loader_never_needs(folder: Path) -> None:
    """What a real repository carries beside the weights: remote code, a model card, training state."""
    (folder / REMOTE_CODE).write_text("raise SystemExit('remote code must never be downloaded or run')\n")
    (folder / "README.md").write_text("# tiny\n")
    (folder / "training_args.bin").write_bytes(b"\0" * 64)


REPO_BUILDERS = {"official-vary-tiny": build_official_vary_tiny, "official-got-ocr2": build_official_got}


# --- the stand-in hub ---------------------------------------------------------------------------------------
class FakeHub:
    """Serves `repos[repo_id] = {"refs": {name: commit}, "commits": {commit: folder}}` as the HF hub API does."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):
                hub_.answer(self, body=False)

            def do_GET(self):
                hub_.answer(self, body=True)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, repo_id: str, folder: Path, refs: tuple[str, ...] = ()) -> str:
        """Publish `folder` as a commit of `repo_id` (the commit id hashes its files), reachable from `refs`."""
        digest = hashlib.sha1()
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
        commit = digest.hexdigest()
        repo = self.repos.setdefault(repo_id, {"refs": {}, "commits": {}})
        repo["commits"][commit] = folder
        repo["refs"].update(dict.fromkeys(refs, commit))
        return commit

    def downloaded(self) -> set[str]:
        return {path.rsplit("/", 1)[-1] for method, path in self.requests if method == "GET" and "/resolve/" in path}

    def answer(self, request: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(request.path).path)
        self.requests.append((request.command, path))
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)(?:/.*)?", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        match = api or resolve
        if match is None or match.group(1) not in self.repos:
            return self.send(request, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
        repo = self.repos[match.group(1)]
        revision = match.group(3) if api else match.group(2)
        commit = revision if revision in repo["commits"] else repo["refs"].get(revision)
        if commit is None:
            error = b'{"error": "Invalid rev id"}'
            return self.send(request, 404, error, {"X-Error-Code": "RevisionNotFound"})
        folder = repo["commits"][commit]
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        if api and match.group(2) == "revision":
            siblings = [{"rfilename": f} for f in files]
            info = {"id": match.group(1), "sha": commit, "private": False, "siblings": siblings}
            return self.send(request, 200, json.dumps(info).encode(), body=body)
        if api:
            tree = [{"type": "file", "path": f, "size": (folder / f).stat().st_size, "oid": _oid(folder / f)}
                    for f in files]  # fmt: skip
            return self.send(request, 200, json.dumps(tree).encode(), body=body)
        file = folder / match.group(3)
        if not file.is_file():
            return self.send(request, 404, b'{"error": "Entry not found"}', {"X-Error-Code": "EntryNotFound"})
        headers = {"ETag": f'"{_oid(file)}"', "X-Repo-Commit": commit, "Content-Type": "application/octet-stream"}
        self.send(request, 200, file.read_bytes(), headers, body=body)

    @staticmethod
    def send(request, status: int, data: bytes, headers: dict | None = None, body: bool = True) -> None:
        request.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {}), "Content-Length": len(data)}.items():
            request.send_header(name, str(value))
        request.end_headers()
        if body:
            request.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _oid(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id, as the hub reports


# --- fixtures -----------------------------------------------------------------------------------------------
# The GOT repository's runs load a 151k-token Qwen tokenizer several times (~5 s each): slow tier.
BUILDER_PARAMS = [
    pytest.param(name, marks=pytest.mark.slow) if "got" in name else name for name in sorted(REPO_BUILDERS)
]


@pytest.fixture(scope="module", params=BUILDER_PARAMS)
def served(request, tmp_path_factory):
    """The stand-in hub serving REPO: commit `main` (seed 0) and an older commit tagged `v1` (seed 1)."""
    build = REPO_BUILDERS[request.param]
    root = tmp_path_factory.mktemp("served")
    fake = FakeHub()
    old = fake.add(REPO, build(root / "v1", seed=1), refs=("v1",))
    new = fake.add(REPO, build(root / "main", seed=0), refs=("main",))
    yield dict(hub=fake, folders={"main": root / "main", "v1": root / "v1"}, commits={"main": new, "v1": old})
    fake.close()


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "page.png"
    path.write_bytes(make_png())
    return path


def run_vary(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m vary ...` in a fresh process: huggingface_hub reads HF_* variables when it is imported."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | {"OMP_NUM_THREADS": "1"} | env
    return subprocess.run([sys.executable, "-m", "vary", *args], env=full_env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def hub_env(url: str, home: Path, **extra: str) -> dict[str, str]:
    return {"HF_ENDPOINT": url, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1", **extra}


def local_ocr(folder: Path, image: Path) -> str:
    """What `vary ocr` prints for a local folder: the reference a hub download must reproduce."""
    result = CliRunner().invoke(app, ["ocr", str(image), "--model", str(folder), *FAST])
    assert result.exit_code == 0, result.output
    return result.stdout


def dead_endpoint() -> str:
    """A loopback URL nothing listens on (the port was just free)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# --- end to end through the CLI -----------------------------------------------------------------------------
@pytest.mark.slow  # `python -m vary` subprocesses: ~10 s each on 2 cores
def test_ocr_from_hub_id_then_offline_from_cache(served, image, tmp_path):
    fake, home = served["hub"], tmp_path / "hf"
    expected = local_ocr(served["folders"]["main"], image)

    first = run_vary("ocr", str(image), "--model", REPO, *FAST, env=hub_env(fake.url, home))
    assert first.returncode == 0, first.stderr
    assert first.stdout == expected  # the downloaded model reads the page exactly as the folder it came from
    assert "Fetching" in first.stderr  # huggingface_hub's progress bar (quiet_loading must come after it)
    snapshot = home / "hub" / "models--tiny-org--tiny-vary" / "snapshots" / served["commits"]["main"]
    assert snapshot.is_dir()
    served_files = {p.name for p in served["folders"]["main"].iterdir()}
    assert {p.name for p in snapshot.iterdir()} == served_files - NOT_FOR_LOADING  # what the loader needs, only
    assert not fake.downloaded() & NOT_FOR_LOADING  # the remote code was never even requested

    # second run: no hub at all (offline mode, and the endpoint points nowhere): the cache serves it
    before = len(fake.requests)
    offline = run_vary("ocr", str(image), "--model", REPO, *FAST,
                       env=hub_env(dead_endpoint(), home, HF_HUB_OFFLINE="1"))  # fmt: skip
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout == expected and len(fake.requests) == before


@pytest.mark.slow  # `python -m vary` subprocesses: ~10 s each on 2 cores
def test_revision_is_honoured(served, image, tmp_path):
    fake, home = served["hub"], tmp_path / "hf"
    expected_v1, expected_main = (local_ocr(served["folders"][rev], image) for rev in ("v1", "main"))
    assert expected_v1 != expected_main  # different weights read differently, so the check below can fail
    result = run_vary("ocr", str(image), "--model", f"{REPO}@v1", *FAST, env=hub_env(fake.url, home))
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_v1
    snapshots = home / "hub" / "models--tiny-org--tiny-vary" / "snapshots"
    assert [p.name for p in snapshots.iterdir()] == [served["commits"]["v1"]]  # main was not fetched
    assert (home / "hub" / "models--tiny-org--tiny-vary" / "refs" / "v1").read_text() == served["commits"]["v1"]


@pytest.mark.slow  # `python -m vary` subprocesses: ~10 s each on 2 cores
def test_no_hub_and_no_cache_is_one_line_and_exit_2(served, image, tmp_path):
    url = dead_endpoint()
    result = run_vary("ocr", str(image), "--model", f"{REPO}@v1", env=hub_env(url, tmp_path / "empty"))
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot download {REPO}@v1: no connection to {url}")
    assert "not in the cache" in line and "pass a local folder" in line

    offline = run_vary("ocr", str(image), "--model", REPO, env=hub_env(url, tmp_path / "empty", HF_HUB_OFFLINE="1"))
    assert offline.returncode == 2
    (line,) = offline.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot load {REPO}: HF_HUB_OFFLINE is set and it is not in the cache")


# --- the library, in this process (huggingface_hub's settings patched like the environment would set them) -
@pytest.fixture
def in_process_hub(served, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", served["hub"].url)
    template = served["hub"].url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return served


def test_pipeline_and_load_accept_hub_ids(in_process_hub, image):
    from vary.infer.pipeline import Pipeline

    served = in_process_hub
    pipe = Pipeline.from_pretrained(f"{REPO}@v1")
    assert pipe.name == f"{REPO}@v1"
    reference = Pipeline.from_pretrained(served["folders"]["v1"])
    assert pipe.ocr(image, max_new_tokens=8) == reference.ocr(image, max_new_tokens=8)
    model, processor = vary.load(REPO)  # main
    expected = vary.load_model(served["folders"]["main"]).state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())
    assert hub.model_name(hub.resolve_model(REPO)) == f"{REPO}@{served['commits']['main'][:7]}"


def test_serve_eval_and_convert_accept_hub_ids(in_process_hub, tmp_path, monkeypatch):
    import uvicorn

    from vary.eval.baselines import get_predictor

    served = in_process_hub
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda asgi, **kwargs: calls.append(asgi))
    result = CliRunner().invoke(app, ["serve", "--model", f"{REPO}@v1"])
    assert result.exit_code == 0, result.output
    # the server's name is the snapshot's repo and commit
    assert calls[0].state.pipeline.name == f"{REPO}@{served['commits']['v1'][:7]}"

    assert get_predictor(f"{REPO}@v1").name == f"{REPO}@v1"

    result = CliRunner().invoke(app, ["convert", f"{REPO}@v1", str(tmp_path / "ours")])
    assert result.exit_code == 0, result.output
    expected = vary.load_model(served["folders"]["v1"]).state_dict()
    converted = vary.load_model(tmp_path / "ours").state_dict()
    assert all(torch.equal(converted[key], value) for key, value in expected.items())


def test_registry_name_loads_with_its_defaults(in_process_hub, monkeypatch):
    """A known name reaches its repo at its revision, with the preprocessing/template its config.json lacks."""
    from vary.config import CLIP_MEAN

    entry = hub.KnownModel(name="tiny", repo_id=REPO, revision="v1", architecture="varyOPTForCausalLM",
                           parameters="1 M", languages="en", license="MIT", good_at="tests",
                           defaults={"image_norm": "clip", "template": "vicuna_v1"})  # fmt: skip
    monkeypatch.setitem(hub.REGISTRY, "tiny", entry)
    model, processor = vary.load("tiny")
    assert model.config.template == "vicuna_v1" and list(model.config.image_mean) == list(CLIP_MEAN)
    expected = vary.load_model(in_process_hub["folders"]["v1"]).state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())
    assert vary.load_model("tiny", template="plain").config.template == "plain"  # the caller's overrides win


def test_an_incomplete_cache_is_reported_then_completed(in_process_hub, monkeypatch):
    from huggingface_hub import constants

    snapshot = hub.resolve_model(f"{REPO}@v1")
    (snapshot / "config.json").unlink()  # as after an interrupted download
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hub.HubError, match=r"^cannot load .*@v1: its copy in the cache .* is incomplete"):
        hub.resolve_model(f"{REPO}@v1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert hub.resolve_model(f"{REPO}@v1") == snapshot and (snapshot / "config.json").is_file()


def test_unknown_revision_and_repo_are_one_line_errors(in_process_hub):
    with pytest.raises(hub.HubError, match=r"has no revision 'nope'"):
        hub.resolve_model(f"{REPO}@nope")
    with pytest.raises(hub.HubError, match=r"has no model tiny-org/missing"):
        hub.resolve_model("tiny-org/missing")


def test_a_local_folder_wins_over_a_hub_id(in_process_hub, tmp_path, monkeypatch):
    local = tmp_path / "tiny-org" / "tiny-vary"
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    before = len(in_process_hub["hub"].requests)
    assert hub.resolve_model(REPO) == Path(REPO)  # the folder, not the hub's repository
    assert len(in_process_hub["hub"].requests) == before


def test_registry_defaults_apply_to_known_repos(monkeypatch, tmp_path):
    """vary-toy's CLIP preprocessing comes with its name, its repo id, and its cached snapshot folder."""
    clip = hub.image_norm_overrides("clip")
    assert hub.loader_defaults("vary-toy") == clip == hub.loader_defaults("HaoranWei/Vary-toy@abc")
    assert hub.loader_defaults("vary-tiny") == clip | {"template": "vicuna_v1"}
    snapshot = tmp_path / "models--HaoranWei--Vary-toy" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    assert hub.loader_defaults(snapshot) == clip and hub.model_name(snapshot) == "HaoranWei/Vary-toy@aaaaaaa"
    assert hub.loader_defaults("tiny-org/tiny-vary") == {} == hub.loader_defaults(tmp_path)


# --- specs and the registry ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, message",
    [
        ("no-such-model", "unknown model 'no-such-model': not a folder, a hub id"),
        ("org/name@", "bad revision ''"),
        ("org/na me", "unknown model 'org/na me'"),
    ],
)
def test_bad_specs_are_one_line_errors_with_exit_2(spec, message, image):
    result = CliRunner().invoke(app, ["ocr", str(image), "--model", spec])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line


def test_specs_parse():
    assert hub.parse_spec("got-ocr2")[:2] == ("stepfun-ai/GOT-OCR2_0", "main")
    assert hub.parse_spec("GOT-OCR2@abc123")[:2] == ("stepfun-ai/GOT-OCR2_0", "abc123")  # names ignore case
    assert hub.parse_spec("org/name@refs/pr/1")[:2] == ("org/name", "refs/pr/1")
    assert hub.parse_spec("HaoranWei/Vary-toy")[2] is hub.REGISTRY["vary-toy"]  # the repo id finds its entry
    assert hub.resolve_model("./not/there") == Path("not/there")  # plainly a path: the loader reports it


def test_registry_entries_are_complete():
    for name, model in hub.REGISTRY.items():
        assert name == model.name and hub.HUB_ID.fullmatch(model.repo_id) and hub.REVISION.fullmatch(model.revision)
        assert all([model.architecture, model.parameters, model.languages, model.license, model.good_at])
        assert set(model.defaults) <= {"image_norm", "template"}
    assert {"got-ocr2", "got-ocr2-hf", "vary-toy"} <= set(hub.REGISTRY)


def test_models_command_table_and_json():
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == list(hub.REGISTRY)
    assert rows[0]["repo_id"] == "stepfun-ai/GOT-OCR2_0" and rows[0]["pinned"] is False
    assert next(r for r in rows if r["name"] == "got-ocr2-hf")["pinned"] is True  # a full commit hash
    table = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
    assert table.exit_code == 0
    for model in hub.REGISTRY.values():
        assert model.name in table.stdout and model.repo_id in table.stdout
