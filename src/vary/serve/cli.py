"""`vary serve`: load the model once, then serve the HTTP API and the demo page with uvicorn."""

from __future__ import annotations

from pathlib import Path

import typer

from vary.infer.cli import quiet_loading, resolve_model


def serve_command(
    model: Path | None = typer.Option(None, "--model", help="model folder (ours or official); default: the bundled model"),
    host: str = typer.Option("127.0.0.1", "--host", help="interface to listen on (0.0.0.0 exposes it to the network)"),
    port: int = typer.Option(8000, "--port"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, mps"),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16 or float16 (default: float32 on CPU, bf16/fp16 on GPU)"),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.001, help="larger uploads get 413"),
    queue_size: int = typer.Option(4, "--queue-size", min=1, help="requests in flight or waiting; more get 503"),
    max_new_tokens: int = typer.Option(2048, "--max-new-tokens", min=1, help="default generation budget per page"),
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

    quiet_loading()
    model_dir = resolve_model(model)
    try:
        pipeline = Pipeline.from_pretrained(model_dir, device=device, dtype=dtype, max_new_tokens=max_new_tokens)
    except (CheckpointError, TokenizerError, ValueError) as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(1) from None
    pipeline.name = served_model_name or pipeline.name  # what /v1/models lists and OpenAI clients send as `model`
    app = create_app(pipeline, max_upload_mb=max_upload_mb, queue_size=queue_size, max_batch=max_batch,
                     batch_window_ms=batch_window_ms)  # fmt: skip
    typer.echo(f"vary: serving {model_dir} on http://{host}:{port} (demo at /, API docs at /docs)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
