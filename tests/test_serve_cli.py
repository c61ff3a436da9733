"""`vary serve` wiring: the model is loaded once and handed to the app uvicorn runs (uvicorn itself stubbed)."""

from __future__ import annotations

import pytest
import uvicorn
from typer.testing import CliRunner

from vary.cli import app
from vary.infer import cli as infer_cli


def test_serve_loads_the_model_once_and_runs_uvicorn(tiny_model_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda asgi, **kwargs: calls.append((asgi, kwargs)))
    args = ["--port", "8123", "--queue-size", "3", "--max-batch", "6", "--batch-window-ms", "2.5"]
    result = CliRunner().invoke(app, ["serve", "--model", str(tiny_model_dir), *args])
    assert result.exit_code == 0, result.output
    ((asgi, kwargs),) = calls
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 8123
    assert asgi.state.admission.capacity == 3 and asgi.state.pipeline.name == tiny_model_dir.name
    assert asgi.state.pipeline.batcher.max_batch == 6 and asgi.state.pipeline.batcher.window == 0.0025
    assert {"/v1/ocr", "/v1/chat/completions", "/v1/models", "/metrics"} <= {route.path for route in asgi.routes}


def test_served_model_name(tiny_model_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda asgi, **kwargs: calls.append(asgi))
    args = ["serve", "--model", str(tiny_model_dir), "--served-model-name", "vary-ocr"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert calls[0].state.pipeline.name == "vary-ocr"


@pytest.mark.parametrize(
    "args, code, message", [([], 2, "no model folder"), (["--model", "/nonexistent"], 1, "not a model folder")]
)
def test_serve_without_a_usable_model(monkeypatch, args, code, message):
    monkeypatch.setattr(infer_cli, "bundled_model_dir", lambda: None)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn must not start"))
    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == code and message in result.stderr
