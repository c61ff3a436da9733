"""`vary serve`: load the model once, then serve the HTTP API and the demo page with uvicorn."""

from __future__ import annotations

from pathlib import Path

import typer

from vary.infer.cli import Quantize, quiet_loading, resolve_model


def serve_command(
    model: Path | None = typer.Option(None, "--model", help="model folder (ours or official); default: the bundled model"),
    host: str = typer.Option("127.0.0.1", "--host", help="interface to listen on (0.0.0.0 exposes it to the network)"),
    port: int = typer.Option(8000, "--port"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, mps"),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16, float16 or auto (bf16 on CPUs with native bf16); default: float32 on CPU, bf16/fp16 on GPU"),
    quantize: Quantize | None = typer.Option(None, "--quantize", help="int8: int8 decoder weights, faster CPU decoding; with --dtype auto the vision branch runs in bf16 where native (docs/cpu-speed.md)"),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.001, help="larger uploads get 413"),
    queue_size: int = typer.Option(4, "--queue-size", min=1, help="requests in flight or waiting; more get 503"),
    max_new_tokens: int = typer.Option(2048, "--max-new-tokens", min=1, help="default generation budget per page"),
) -> None:  # fmt: skip
    """Serve the HTTP API (/v1/ocr, /v1/chat, /docs) and a demo page at /."""
    import uvicorn

    from vary.infer.pipeline import Pipeline
    from vary.modeling.official import CheckpointError
    from vary.modeling.tokenizer import TokenizerError
    from vary.serve.app import create_app

    quiet_loading()
    model_dir = resolve_model(model)
    try:
        pipeline = Pipeline.from_pretrained(
            model_dir, device=device, dtype=dtype, quantize=quantize and quantize.value, max_new_tokens=max_new_tokens
        )
    except (CheckpointError, TokenizerError, ValueError) as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(1) from None
    app = create_app(pipeline, max_upload_mb=max_upload_mb, queue_size=queue_size)
    typer.echo(f"vary: serving {model_dir} on http://{host}:{port} (demo at /, API docs at /docs)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
