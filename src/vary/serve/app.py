"""HTTP API and demo page over one shared Pipeline (FastAPI).

    POST /v1/ocr          multipart: file (image or PDF), task, pages, question -> JSON, one entry per page
                          (GOT-OCR2 models also: box "x1,y1,x2,y2" in page pixels, color, crop, max_tiles)
    POST /v1/ocr/stream   the same form -> server-sent events: page, delta (text chunks), done, end | error
    POST /v1/chat         JSON {image: base64 | data URL, messages | question} or multipart (image + ...)
    GET  /health          model, device, queue use
    POST /v1/chat/completions, GET /v1/models   OpenAI-compatible (openai_api.py)
    GET  /metrics         Prometheus text format (metrics.py)
    GET  /                demo page (static/index.html): upload, pick a task, watch the answer stream in
    GET  /docs            OpenAPI docs

The model is loaded once and shared; requests are admitted into a bounded queue (`queue_size` in flight
or waiting, one more gets 503 with Retry-After); their generation jobs are batched across requests
(batching.py: up to `max_batch` rows per generate(), jobs that arrive within `batch_window_ms`), run on
one worker thread, so the event loop keeps serving /health and new requests. Every error is JSON:
{"error": message, "status": code} (OpenAI's shape on the OpenAI routes).

Limits (docs/serving-limits.md): request bodies are counted while they stream in (chunked or not) and cut
off with 413 at the upload limit; images are checked from their header before any pixel is decoded; a
request whose client disconnects, or that runs past `request_timeout_s` (504), stops generating and frees
its queue slot within a token; with `trusted_hosts`, other Host headers get 400 (DNS-rebinding guard).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from anyio import to_thread
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

import vary
from vary.infer.documents import CROP_RENDER_SIZE, RENDER_SIZE, Document, DocumentError
from vary.infer.pipeline import Pipeline, page_record
from vary.infer.tasks import Color, Task
from vary.modeling.processor import ImageError
from vary.prompts import PromptError, parse_box
from vary.serve.batching import BatchedPipeline
from vary.serve.metrics import ServerMetrics
from vary.serve.openai_api import install_openai_routes

STATIC = Path(__file__).parent / "static"
MULTIPART_SLACK = 64 * 1024  # form fields and boundaries around the file, allowed over the upload limit
MAX_TILES_LIMIT = 12  # multi-crop tiles a client may ask for per page (each is a full image-encoder pass)


class PageResult(BaseModel):
    page: int | None  # 1-based PDF page; null for an image
    text: str
    truncated_by_loop_guard: bool
    num_tokens: int
    chart: dict | None = None  # task chart: the parsed python-dict
    error: str | None = None  # task chart: why the answer did not parse


class OcrResponse(BaseModel):
    model: str
    task: str
    source: str
    pages: list[PageResult]
    seconds: float


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatResponse(BaseModel):
    model: str
    message: ChatMessage
    truncated_by_loop_guard: bool
    num_tokens: int
    seconds: float


class Admission:
    """A bounded queue: at most `capacity` requests in flight or waiting; the rest are told to retry."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.in_use = 0
        self.seconds_per_request = 1.0  # moving average, for Retry-After
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self.in_use >= self.capacity:
                return False
            self.in_use += 1
            return True

    def release(self, seconds: float | None = None) -> None:
        with self._lock:
            self.in_use -= 1
            if seconds is not None:
                self.seconds_per_request = 0.8 * self.seconds_per_request + 0.2 * seconds

    def retry_after(self) -> int:
        return max(1, math.ceil(self.seconds_per_request * self.in_use))

    def busy_error(self) -> HTTPException:
        return HTTPException(503, f"busy: {self.in_use} request(s) queued, try again later",
                             headers={"Retry-After": str(self.retry_after())})  # fmt: skip


def create_app(
    pipeline: Pipeline,
    max_upload_mb: float = 20.0,
    queue_size: int = 4,
    max_pages: int = 50,
    request_timeout_s: float | None = 600.0,
    trusted_hosts: list[str] | None = None,
    max_batch: int = 4,
    batch_window_ms: float = 5.0,
) -> FastAPI:
    """The API + demo page over `pipeline` (loaded once by the caller, shared by every request).

    `request_timeout_s`: a request still generating after this long is stopped and answered 504 (None: no
    limit). `trusted_hosts`: the Host header values accepted (e.g. ["localhost", "127.0.0.1"]); None: any.
    `max_batch`, `batch_window_ms`: batching across concurrent requests (serve/batching.py)."""
    app = FastAPI(
        title="Vary",
        version=vary.__version__,
        description="Document OCR, markdown, chart parsing and questions about documents with a Vary model.",
    )
    limit = int(max_upload_mb * 1024 * 1024)
    admission = Admission(queue_size)
    metrics = ServerMetrics()
    pipeline = BatchedPipeline(pipeline, max_batch, batch_window_ms, metrics)  # every model call is batched
    metrics.watch(admission, pipeline.batcher)
    app.state.pipeline, app.state.admission, app.state.metrics = pipeline, admission, metrics
    _install_error_handlers(app, limit)
    if trusted_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=trusted_hosts)
    metrics.install(app)
    install_openai_routes(app, pipeline, admission, limit)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @asynccontextmanager
    async def admitted():
        if not admission.try_acquire():
            raise admission.busy_error()
        start = time.perf_counter()
        try:
            yield
        finally:
            admission.release(time.perf_counter() - start)

    async def open_upload(file: UploadFile, pages: str | None, crop: bool | None = None) -> Document:
        size = CROP_RENDER_SIZE if (pipeline.crop if crop is None else crop) else RENDER_SIZE  # see CROP_RENDER_SIZE
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, f"{file.filename}: upload is over the {max_upload_mb:g} MB limit")
        try:
            doc = await to_thread.run_sync(
                lambda: Document.open(
                    data, file.filename or "upload", pages, render_size=size, single_images_ignore_pages=True
                )
            )
        except DocumentError as err:
            raise HTTPException(422, str(err)) from None
        if len(doc) > max_pages:
            raise HTTPException(
                422, f"{doc.name}: {len(doc)} pages selected, at most {max_pages} per request (use pages)"
            )
        return doc

    def check_task(task: Task, question: str | None, options: dict | None = None) -> None:
        options = options or {}
        try:
            pipeline.check_prompt(task.value, question or None, options.get("box"), options.get("color"),
                                  options.get("crop"))  # fmt: skip
        except ValueError as err:
            raise HTTPException(422, str(err)) from None

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict:
        queue = {"capacity": admission.capacity, "in_use": admission.in_use}
        return {"status": "ok", **pipeline.info(), "queue": queue, "max_upload_mb": max_upload_mb,
                "request_timeout_s": request_timeout_s}  # fmt: skip

    async def until_done_or_gone(request: Request, work):
        """`work(cancel)` in a worker thread; `cancel` (a threading.Event) is set when the client disconnects or
        the time limit passes, which stops generation at the next token. Waits for the thread to finish, so the
        queue slot is freed only once the model is. Time limit -> 504."""
        cancel, why = threading.Event(), []

        async def watch_client() -> None:  # the body is read: the next message is the disconnect
            while (await request.receive())["type"] != "http.disconnect":
                pass
            why.append("disconnected")
            cancel.set()

        async def watch_clock() -> None:
            await anyio.sleep(request_timeout_s)
            why.append("timeout")
            cancel.set()

        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_client)
            if request_timeout_s:
                tg.start_soon(watch_clock)
            try:
                result = await to_thread.run_sync(work, cancel)
            except Exception as err:  # re-raised below, outside the task group (which would wrap it in a group)
                failure = err
            finally:
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if why and why[0] == "timeout":
            raise HTTPException(504, f"stopped after the {request_timeout_s:g} s per-request time limit")
        return result

    @app.post("/v1/ocr", response_model=OcrResponse, responses=_ERRORS)
    async def ocr(
        request: Request,
        file: UploadFile = File(..., description="an image (PNG, JPEG, ...) or a PDF"),
        task: Task = Form(Task.ocr),
        pages: str | None = Form(None, description="PDF pages, e.g. 1-3,7 (default: all)"),
        question: str | None = Form(None, description="for task ask"),
        max_new_tokens: int | None = Form(None, ge=1),
        box: str | None = Form(None, description="GOT-OCR2: only the text in x1,y1,x2,y2 (page pixels)"),
        color: Color | None = Form(None, description="GOT-OCR2: only the text of this colour"),
        crop: bool | None = Form(None, description="GOT-OCR2: multi-crop mode (default: the server's)"),
        max_tiles: int | None = Form(None, ge=1, le=MAX_TILES_LIMIT, description="most tiles per page with crop"),
    ) -> OcrResponse:
        """Every selected page of the upload -> text (or a chart dict, or an answer)."""
        options = _prompt_options(box, color, crop, max_tiles)
        check_task(task, question, options)
        doc = await open_upload(file, pages, crop)
        overrides = _budget(pipeline, max_new_tokens) | options
        start = time.perf_counter()
        async with admitted():
            records = await until_done_or_gone(
                request, lambda cancel: _run_document(pipeline, doc, task.value, question or None, overrides, cancel)
            )
        return OcrResponse(model=pipeline.name, task=task.value, source=doc.name, pages=records,
                           seconds=round(time.perf_counter() - start, 3))  # fmt: skip

    @app.post("/v1/ocr/stream", responses=_ERRORS | {200: {"content": {"text/event-stream": {}}}})
    async def ocr_stream(
        file: UploadFile = File(...),
        task: Task = Form(Task.ocr),
        pages: str | None = Form(None),
        question: str | None = Form(None),
        max_new_tokens: int | None = Form(None, ge=1),
        box: str | None = Form(None),
        color: Color | None = Form(None),
        crop: bool | None = Form(None),
        max_tiles: int | None = Form(None, ge=1, le=MAX_TILES_LIMIT),
    ) -> StreamingResponse:
        """Like /v1/ocr, as server-sent events: `page`, `delta` {text}, `done` {the page's result}, `end`."""
        options = _prompt_options(box, color, crop, max_tiles)
        check_task(task, question, options)
        doc = await open_upload(file, pages, crop)
        overrides = _budget(pipeline, max_new_tokens) | options
        if not admission.try_acquire():
            raise admission.busy_error()
        events = _stream_events(pipeline, doc, task.value, question or None, overrides, request_timeout_s)
        return _AdmittedStream(events, admission, media_type="text/event-stream",
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip

    @app.post("/v1/chat", response_model=ChatResponse, responses=_ERRORS, openapi_extra=_CHAT_OPENAPI)
    async def chat(request: Request) -> ChatResponse:
        """One image and a conversation (only the last user message is read: the models are single-turn)."""
        image, question, max_new_tokens = await _read_chat(request, limit)
        overrides = _budget(pipeline, max_new_tokens)
        start = time.perf_counter()
        async with admitted():
            try:
                result = await until_done_or_gone(
                    request, lambda cancel: pipeline.generate([image], question, "chat", cancel=cancel, **overrides)[0]
                )
            except ImageError as err:
                raise HTTPException(422, str(err)) from None
        return ChatResponse(model=pipeline.name, message=ChatMessage(role="assistant", content=result.text),
                            truncated_by_loop_guard=result.truncated_by_loop_guard, num_tokens=result.num_tokens,
                            seconds=round(time.perf_counter() - start, 3))  # fmt: skip

    return app


# --- helpers ---------------------------------------------------------------------------------------------
def _prompt_options(box: str | None, color: Color | None, crop: bool | None, max_tiles: int | None) -> dict:
    """GOT-OCR2's prompt options from form fields, for Pipeline.run_pages / stream (422 on a malformed box)."""
    try:
        pixels = parse_box(box) if box else None
    except PromptError as err:
        raise HTTPException(422, str(err)) from None
    return {"box": pixels, "color": color.value if color else None, "crop": crop, "max_tiles": max_tiles}


def _budget(pipeline: Pipeline, max_new_tokens: int | None) -> dict:
    """A client may ask for fewer new tokens than the server's default (`vary serve --max-new-tokens`), not more."""
    if not max_new_tokens:
        return {}
    return {"max_new_tokens": min(max_new_tokens, pipeline.settings.max_new_tokens)}


def _run_document(
    pipeline: Pipeline, doc: Document, task: str, question: str | None, overrides: dict, cancel: threading.Event
) -> list[dict]:
    try:
        pages = pipeline.run_pages(doc, task, question, cancel=cancel, **overrides)
        return [page_record(page, result, task) for page, result in pages]
    except (DocumentError, ImageError, PromptError) as err:
        raise HTTPException(422, str(err)) from None


async def _stream_events(
    pipeline: Pipeline, doc: Document, task: str, question: str | None, overrides: dict, timeout_s: float | None
) -> AsyncIterator[str]:
    """Server-sent events for each page; the blocking iterator is read in a worker thread chunk by chunk."""
    start, stream = time.perf_counter(), None
    deadline = start + timeout_s if timeout_s else math.inf
    try:
        for page in doc:
            yield _sse("page", {"page": page.number, "pages": len(doc)})
            image = await to_thread.run_sync(page.image)
            stream = await to_thread.run_sync(lambda image=image: pipeline.stream(image, task, question, **overrides))
            chunks = iter(stream)
            while True:
                with anyio.move_on_after(deadline - time.perf_counter()):  # the wait for a chunk counts too
                    chunk = await to_thread.run_sync(next, chunks, None, abandon_on_cancel=True)
                    if chunk is None:
                        break
                    yield _sse("delta", {"page": page.number, "text": chunk})
                    continue
                stream.cancel()  # the time limit passed (the abandoned next() returns once generation stops)
                yield _sse("error", {"error": f"stopped after the {timeout_s:g} s per-request time limit",
                                     "status": 504})  # fmt: skip
                return
            yield _sse("done", page_record(page, stream.result, task))
        yield _sse("end", {"pages": len(doc), "seconds": round(time.perf_counter() - start, 3)})
    except (DocumentError, ImageError, PromptError) as err:
        yield _sse("error", {"error": str(err), "status": 422})
    except Exception as err:  # the response has started: report in-band, as an event
        yield _sse("error", {"error": f"{err.__class__.__name__}: {err}", "status": 500})
    finally:
        if stream is not None:
            stream.cancel()  # the client went away mid-page: stop generating


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class _AdmittedStream(StreamingResponse):
    """Releases its admission slot when the response ends, however it ends (done, error, client gone)."""

    def __init__(self, content, admission: Admission, **kwargs):
        super().__init__(content, **kwargs)
        self.admission = admission

    async def __call__(self, scope, receive, send) -> None:
        start = time.perf_counter()
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.admission.release(time.perf_counter() - start)


async def _read_chat(request: Request, limit: int) -> tuple[bytes, str, int | None]:
    """(image bytes, question, max_new_tokens) from a JSON or multipart chat request."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("image") or form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(422, "multipart chat needs a file field 'image'")
        image = await upload.read(limit + 1)
        messages = form.get("messages")
        try:
            messages = json.loads(messages) if messages else None
        except json.JSONDecodeError as err:
            raise HTTPException(422, f"messages: not JSON ({err})") from None
        body = {"question": form.get("question"), "messages": messages, "max_new_tokens": form.get("max_new_tokens")}
    elif content_type.startswith("application/json"):
        try:
            body = json.loads(await request.body())
        except RecursionError:  # json's C parser recurses once per nesting level
            raise HTTPException(422, "request body: JSON nested too deeply") from None
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError (invalid UTF-8)
            raise HTTPException(422, f"request body: not JSON ({err})") from None
        if not isinstance(body, dict) or not isinstance(body.get("image"), str):
            raise HTTPException(422, "JSON chat needs 'image': a base64 string or a data: URL")
        image = _decode_base64_image(body["image"], limit)
    else:
        raise HTTPException(415, "send application/json or multipart/form-data")
    if len(image) > limit:
        raise HTTPException(413, f"image is over the {limit / 2**20:g} MB limit")
    if not image:
        raise HTTPException(422, "image: empty file (0 bytes)")
    return image, _question(body), _positive_int(body.get("max_new_tokens"), "max_new_tokens")


def _positive_int(value, name: str) -> int | None:
    """A JSON integer or a form field of digits, at least 1; None when absent. Floats (1e999 is inf) are refused."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HTTPException(422, f"{name}: must be a positive integer, got {str(value)[:40]!r}")
    return value


def _decode_base64_image(value: str, limit: int) -> bytes:
    payload = value.split(",", 1)[1] if value.startswith("data:") else value
    if len(payload) * 3 // 4 > limit:
        raise HTTPException(413, f"image is over the {limit / 2**20:g} MB limit")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(422, "image: not valid base64") from None


def _question(body: dict) -> str:
    """`question`, else the text of the last user message (a string or OpenAI-style text parts)."""
    if body.get("question"):
        return str(body["question"])
    messages = body.get("messages") or []
    if not isinstance(messages, list):
        raise HTTPException(422, "messages: must be a list of {role, content}")
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(
                    p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
                )
            if isinstance(content, str) and content.strip():
                return content.strip()
    raise HTTPException(422, "chat needs 'question' or a user message in 'messages'")


def _install_error_handlers(app: FastAPI, limit: int) -> None:
    """Every error as JSON {"error", "status"}; over-size bodies refused before they are read."""

    def error(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
        return JSONResponse({"error": message, "status": status, **extra}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = jsonable_encoder(exc.errors(), exclude={"input", "ctx", "url"})
        where = "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}" for e in details)
        return error(422, where or "invalid request", detail=details)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return error(500, f"{exc.__class__.__name__}: {exc}")

    app.add_middleware(_BodyLimit, limit=limit, error=error)


class _BodyLimit:
    """ASGI middleware: request bodies over the limit get 413, counted as they stream in.

    A declared Content-Length over the limit is refused before the body is read; chunked bodies (no
    Content-Length) are counted chunk by chunk and cut off at the limit, so neither memory nor the temp
    folder ever holds more than the limit, and this happens before admission. The limit is the upload limit
    plus room for form fields, and for JSON the base64 overhead (4/3) on top, so a JSON image may be as large
    as the message says. (Plain ASGI rather than @app.middleware("http"), which would buffer streamed responses.)
    """

    def __init__(self, app, limit: int, error):
        self.app, self.limit, self.error = app, limit, error

    def cap(self, headers: dict) -> int:
        if headers.get(b"content-type", b"").startswith(b"application/json"):
            return math.ceil(self.limit * 4 / 3) + MULTIPART_SLACK
        return self.limit + MULTIPART_SLACK

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        cap, too_large = self.cap(headers), f"is over the {self.limit / 2**20:g} MB upload limit"
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > cap:
            await self.error(413, f"request body of {int(length) / 2**20:.1f} MB {too_large}")(scope, receive, send)
            return
        received, refused, started = 0, False, False

        async def counted_receive() -> dict:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > cap:  # answer now; the app sees a client that went away and stops reading
                    refused = True
                    if not started:
                        await self.error(413, f"request body {too_large}")(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if refused:  # our 413 is the response; whatever the app says after losing its body is dropped
                return
            started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not refused:  # the app's errors after a cut-off body (ClientDisconnect, ...) are expected
                raise


_ERRORS = {code: {"description": text, "content": {"application/json": {"example": {"error": text, "status": code}}}}
           for code, text in ((413, "upload over the size limit"), (422, "unreadable file or bad parameters"),
                              (503, "queue full; see Retry-After"))}  # fmt: skip

_CHAT_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "description": "base64 image or data: URL"},
                        "question": {"type": "string"},
                        "messages": {"type": "array", "items": {"type": "object"}},
                        "max_new_tokens": {"type": "integer"},
                    },
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "question": {"type": "string"},
                        "messages": {"type": "string", "description": "JSON list of {role, content}"},
                        "max_new_tokens": {"type": "integer"},
                    },
                }
            },
        },
    }
}
