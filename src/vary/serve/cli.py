"""`vary serve`: load the model once, then serve the HTTP API and the demo page with uvicorn."""

from __future__ import annotations

import typer

from vary.cli_errors import fail
from vary.infer.cli import MODEL_HELP, int8_tip, quiet_loading, resolve_model
from vary.infer.tasks import Quantize

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve_command(
    model: str | None = typer.Option(None, "--model", help=MODEL_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="interface to listen on (0.0.0.0 exposes it to the network)"),
    port: int = typer.Option(8000, "--port"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, mps"),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16, float16 or auto (bf16 on CPUs with native bf16); default: float32 on CPU, bf16/fp16 on GPU"),
    quantize: Quantize | None = typer.Option(None, "--quantize", help="int8: int8 decoder weights, faster CPU decoding; its vision branch runs in bf16 where native unless --dtype says otherwise (docs/cpu-speed.md)"),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.001, help="larger uploads get 413"),
    queue_size: int = typer.Option(4, "--queue-size", min=1, help="requests in flight or waiting; more get 503"),
    max_new_tokens: int = typer.Option(2048, "--max-new-tokens", min=1, help="default generation budget per page"),
    request_timeout: float = typer.Option(600.0, "--request-timeout", min=0, help="seconds a request may run before it is stopped (504); 0: no limit"),
    trusted_host: list[str] | None = typer.Option(None, "--trusted-host", help="accepted Host header (repeatable; '*' for any); default on a loopback --host: localhost and 127.0.0.1, else any"),
    max_batch: int = typer.Option(4, "--max-batch", min=1, help="rows per generate() batch across concurrent requests (1: no batching)"),
    served_model_name: str | None = typer.Option(None, "--served-model-name", help="the model's name in the API (default: the folder's name)"),
    batch_window_ms: float = typer.Option(5.0, "--batch-window-ms", min=0, help="how long a request waits for others to share its batch"),
) -> None:  # fmt: skip
    """Serve the HTTP API (/v1/ocr, /v1/chat, OpenAI /v1/chat/completions, /metrics, /docs) and a demo page at /."""
    import uvicorn

    from vary.infer.pipeline import Pipeline
    from vary.modeling.official import CheckpointError
    from vary.modeling.tokenizer import TokenizerError
    from vary.serve.app import create_app

    model_dir = resolve_model(model)  # before quiet_loading(): a download keeps its progress bar
    quiet_loading()
    try:
        pipeline = Pipeline.from_pretrained(
            model_dir, device=device, dtype=dtype, quantize=quantize and quantize.value, max_new_tokens=max_new_tokens
        )
    except (CheckpointError, TokenizerError, ValueError) as err:
        fail(err, 1)
    pipeline.name = served_model_name or pipeline.name  # what /v1/models lists and OpenAI clients send as `model`
    if tip := int8_tip(pipeline):
        typer.echo(tip, err=True)
    # Bound to loopback, only a local client should reach the server; a web page the user visits could still
    # send it requests through DNS rebinding (evil.example -> 127.0.0.1), which the Host header gives away.
    hosts = trusted_hosts_for(host, trusted_host)
    app = create_app(pipeline, max_upload_mb=max_upload_mb, queue_size=queue_size, max_batch=max_batch,
                     batch_window_ms=batch_window_ms, request_timeout_s=request_timeout or None,
                     trusted_hosts=hosts)  # fmt: skip
    typer.echo(f"vary: serving {model_dir} on http://{host}:{port} (demo at /, API docs at /docs)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


def trusted_hosts_for(host: str, given: list[str] | None) -> list[str] | None:
    """The Host headers to accept: those given, else the loopback names when listening on loopback, else any."""
    if given:
        return None if "*" in given else list(given)
    return ["localhost", "127.0.0.1"] if host in LOOPBACK else None
