"""Server limits under hostile clients (issue 35): streamed bodies cut off at the upload limit, images refused
from their header, generation stopped when the client leaves or the time limit passes, bad JSON answered
422, and Host headers checked. Requests go straight to the ASGI app, so a test controls every message:
chunk sizes, a Content-Length that lies, and the moment the client disconnects."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import anyio
import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from test_infer_documents import make_pdf, make_png
from test_infer_hardening import frames_file, make_tall_png
from vary.infer.pipeline import Pipeline
from vary.serve.app import MULTIPART_SLACK, create_app

pytestmark = pytest.mark.anyio
LIMIT_MB = 0.5
LIMIT = int(LIMIT_MB * 2**20)


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir) -> Pipeline:
    return Pipeline.from_pretrained(tiny_model_dir, max_new_tokens=8)


class Exchange:
    """One request sent as ASGI messages; `disconnect()` makes the client go away."""

    def __init__(self, path: str, body: bytes, headers: dict[str, str], chunk: int = 64 * 1024):
        framing = {} if {"content-length", "transfer-encoding"} & set(headers) else {"content-length": str(len(body))}
        self.path, self.headers = path, {"host": "test", **framing, **headers}
        self.chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
        self.pulled = 0  # body chunks the server asked for
        self.gone = anyio.Event()
        self.status, self.body = None, b""

    def disconnect(self) -> None:
        self.gone.set()

    async def receive(self) -> dict:
        if self.pulled < len(self.chunks):
            self.pulled += 1
            return {"type": "http.request", "body": self.chunks[self.pulled - 1],
                    "more_body": self.pulled < len(self.chunks)}  # fmt: skip
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")
            if not message.get("more_body"):
                self.gone.set()  # response complete: the client is done

    async def run(self, app) -> Exchange:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": self.path, "raw_path": self.path.encode(), "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 5000), "server": ("test", 80),
                 "headers": [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]}  # fmt: skip
        await app(scope, self.receive, self.send)
        return self

    def json(self) -> dict:
        return json.loads(self.body)


def multipart(path: str, name: str, data: bytes, **fields) -> tuple[bytes, dict[str, str]]:
    request = httpx.Request("POST", f"http://test{path}", files={"file": (name, data)},
                            data={k: str(v) for k, v in fields.items()})  # fmt: skip
    return request.read(), {"content-type": request.headers["content-type"]}


def chat_json(image: bytes, **fields) -> bytes:
    return json.dumps({"image": base64.b64encode(image).decode(), "question": "q", **fields}).encode()


JSON = {"content-type": "application/json"}


# --- 1. images refused from the header ----------------------------------------------------------------------------
async def test_tall_png_is_refused_before_decoding(pipeline):
    app = create_app(pipeline, max_upload_mb=LIMIT_MB)
    body, headers = multipart("/v1/ocr", "tall.png", make_tall_png())
    ocr = await Exchange("/v1/ocr", body, headers).run(app)
    assert ocr.status == 422 and "tall.png: 1x60000000: a side over 32768 pixels" in ocr.json()["error"]
    chat = await Exchange("/v1/chat", chat_json(make_tall_png()), JSON).run(app)
    assert chat.status == 422 and "a side over 32768 pixels" in chat.json()["error"]


async def test_tiff_pages_are_all_read(pipeline):
    app = create_app(pipeline, max_upload_mb=LIMIT_MB)
    body, headers = multipart("/v1/ocr", "scan.tiff", frames_file("TIFF", ["white", "black", "white"]))
    response = await Exchange("/v1/ocr", body, headers).run(app)
    assert response.status == 200 and [p["page"] for p in response.json()["pages"]] == [1, 2, 3]


# --- 2. bodies counted as they stream in ----------------------------------------------------------------------------
@pytest.mark.parametrize("declared", [None, "1000"])  # chunked (no Content-Length), and a Content-Length that lies
async def test_streamed_body_over_the_limit_is_cut_off(pipeline, declared):
    app = create_app(pipeline, max_upload_mb=LIMIT_MB)
    extra = {"content-length": declared} if declared else {"transfer-encoding": "chunked"}
    big = b"\0" * (20 * LIMIT)
    chat = Exchange("/v1/chat", chat_json(big), JSON | extra)
    await chat.run(app)
    assert chat.status == 413 and "over the 0.5 MB upload limit" in chat.json()["error"]
    cap = LIMIT * 4 / 3 + MULTIPART_SLACK
    assert chat.pulled * 64 * 1024 <= cap + 64 * 1024 < len(chat.chunks) * 64 * 1024  # stopped reading at the cap
    body, headers = multipart("/v1/ocr", "big.png", big)
    ocr = Exchange("/v1/ocr", body, headers | extra)
    await ocr.run(app)
    assert ocr.status == 413 and ocr.pulled * 64 * 1024 <= LIMIT + MULTIPART_SLACK + 64 * 1024


async def test_json_image_limit_is_the_upload_limit(pipeline):
    """base64 makes a 0.45 MB image a 0.6 MB body: still under a 0.5 MB upload limit."""
    app = create_app(pipeline, max_upload_mb=LIMIT_MB)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buffer, "PNG")
    image = buffer.getvalue() + b"\0" * (int(0.45 * 2**20) - len(buffer.getvalue()))  # trailing bytes: ignored
    response = await Exchange("/v1/chat", chat_json(image), JSON).run(app)
    assert response.status == 200, response.body
    too_big = await Exchange("/v1/chat", chat_json(image + b"\0" * LIMIT), JSON).run(app)
    assert too_big.status == 413


# --- 3. cancellation and the time limit -----------------------------------------------------------------------------
class WaitingPipeline(Pipeline):
    """Generation that runs until it is cancelled (or 8 s pass): a stand-in for a long 50-page request."""

    def __init__(self, base: Pipeline):
        super().__init__(base.model, base.processor, base.settings, base.name)
        self.entered, self.calls, self.cancelled = threading.Event(), 0, False

    def _generate(self, batch, task, streamer, cancel, settings, watcher=None):
        self.calls += 1
        self.entered.set()
        # Alone, the request's cancel event comes in; batched (the server), each row's job carries its own.
        events = [cancel] if cancel is not None else [job.cancel for job in watcher.__self__.jobs]
        deadline = time.monotonic() + 8
        while not all(event.is_set() for event in events) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.cancelled = all(event.is_set() for event in events)
        return super()._generate(batch, task, streamer, cancel, settings, watcher)


@pytest.mark.parametrize("path", ["/v1/ocr", "/v1/chat"])
async def test_client_disconnect_stops_generation_and_frees_the_slot(pipeline, path):
    waiting = WaitingPipeline(pipeline)
    app = create_app(waiting, max_upload_mb=LIMIT_MB, queue_size=1)
    if path == "/v1/ocr":
        body, headers = multipart(path, "doc.pdf", make_pdf(8))  # two batches of 4 pages
    else:
        body, headers = chat_json(make_png()), JSON
    exchange = Exchange(path, body, headers)
    async with anyio.create_task_group() as tg:
        tg.start_soon(exchange.run, app)
        while not waiting.entered.is_set():
            await anyio.sleep(0.01)
        left = time.perf_counter()
        exchange.disconnect()
    freed_after = time.perf_counter() - left
    assert waiting.cancelled and waiting.calls == 1  # stopped mid-batch; the next batch never started
    assert app.state.admission.in_use == 0 and freed_after < 5


@pytest.mark.parametrize("path", ["/v1/ocr", "/v1/chat"])
async def test_time_limit_is_504_and_frees_the_slot(pipeline, path):
    waiting = WaitingPipeline(pipeline)
    app = create_app(waiting, max_upload_mb=LIMIT_MB, queue_size=1, request_timeout_s=0.3)
    body, headers = multipart(path, "p.png", make_png()) if path == "/v1/ocr" else (chat_json(make_png()), JSON)
    start = time.perf_counter()
    response = await Exchange(path, body, headers).run(app)
    assert response.status == 504 and "0.3 s per-request time limit" in response.json()["error"]
    assert waiting.cancelled and time.perf_counter() - start < 5 and app.state.admission.in_use == 0


# --- 5. bad JSON is the client's error ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body, message",
    [(chat_json(make_png(), max_new_tokens=-5), "max_new_tokens: must be a positive integer"),
     (chat_json(make_png())[:-1] + b', "max_new_tokens": 1e999}', "max_new_tokens: must be a positive integer"),
     (chat_json(make_png(), max_new_tokens=2.5), "max_new_tokens: must be a positive integer"),
     (b'{"image": "\xff\xfe", "question": "q"}', "not JSON"),
     (b"[" * 100_000 + b"]" * 100_000, "nested too deeply")],
    ids=["negative", "1e999", "float", "invalid-utf8", "deep"],
)  # fmt: skip
async def test_bad_chat_json_is_422(pipeline, body, message):
    app = create_app(pipeline, max_upload_mb=LIMIT_MB)
    response = await Exchange("/v1/chat", body, JSON).run(app)
    assert response.status == 422 and message in response.json()["error"], response.body


# --- Host header ------------------------------------------------------------------------------------------------------
async def test_trusted_hosts(pipeline):
    app = create_app(pipeline, trusted_hosts=["localhost", "127.0.0.1"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost:8000") as c:
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/health", headers={"host": "evil.example"})).status_code == 400


def test_serve_checks_host_headers_on_loopback(tiny_model_dir, monkeypatch):
    import uvicorn

    from vary.cli import app as cli

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda asgi, **kwargs: apps.append(asgi))
    for args in ([], ["--host", "0.0.0.0"], ["--trusted-host", "ocr.example"]):
        result = CliRunner().invoke(cli, ["serve", "--model", str(tiny_model_dir), *args])
        assert result.exit_code == 0, result.output

    def accepts(asgi, host: str) -> bool:
        from starlette.testclient import TestClient

        return TestClient(asgi, base_url=f"http://{host}").get("/health").status_code == 200

    loopback, exposed, named = apps
    assert accepts(loopback, "localhost:8000") and not accepts(loopback, "evil.example")
    assert accepts(exposed, "evil.example")
    assert accepts(named, "ocr.example") and not accepts(named, "localhost")


async def test_stream_time_limit_ends_with_an_error_event(pipeline):
    waiting = WaitingPipeline(pipeline)
    app = create_app(waiting, max_upload_mb=LIMIT_MB, queue_size=1, request_timeout_s=0.3)
    body, headers = multipart("/v1/ocr/stream", "p.png", make_png())
    start = time.perf_counter()
    response = await Exchange("/v1/ocr/stream", body, headers).run(app)
    assert response.status == 200 and b"event: error" in response.body and b'"status": 504' in response.body
    assert time.perf_counter() - start < 5 and app.state.admission.in_use == 0
    for _ in range(100):  # the generation thread sees the cancel within a token
        if waiting.cancelled:
            break
        await anyio.sleep(0.05)
    assert waiting.cancelled


def test_serve_on_a_missing_device_is_a_clear_error(tiny_model_dir, monkeypatch):
    import torch
    import uvicorn

    from vary.cli import app as cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn must not start"))
    result = CliRunner().invoke(cli, ["serve", "--model", str(tiny_model_dir), "--device", "cuda"])
    assert result.exit_code == 1 and "CUDA is not available" in result.stderr
