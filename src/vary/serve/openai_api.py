"""OpenAI-compatible endpoints, as vLLM, llama.cpp's server and Ollama serve them, for what applies here.

    GET  /v1/models              the loaded model (its name is the `model` to send)
    POST /v1/chat/completions    one image (an `image_url` part holding a data: URL) + text -> the answer;
                                 `stream: true` sends chat.completion.chunk events and `data: [DONE]`

The models answer one image and one instruction: the text of the last user message is the instruction
(none: plain OCR), earlier turns and system messages are not read. Remote image URLs are refused, never
fetched. `temperature` 0 or absent decodes greedily (the default here, unlike OpenAI's 1); above 0 samples
with `temperature`/`top_p`. Errors have OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Annotated, Literal

from anyio import to_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from vary.infer.pipeline import Result
from vary.modeling.processor import ImageError
from vary.prompts import TASK_PROMPTS
from vary.serve.batching import BatchedPipeline, BatchedStream

DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?:;[\w-]+=[^;,]*)*;base64,(?P<data>.*)", re.DOTALL)


# --- request / response schemas (the subset of OpenAI's that applies) --------------------------------------
class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    url: str = Field(description="a data: URL (data:image/png;base64,...); remote URLs are refused")
    detail: str | None = None  # accepted, unused: the model has one input resolution


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Annotated[TextPart | ImagePart, Field(discriminator="type")]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # other OpenAI fields (user, seed, metadata, ...) change nothing here

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=1, description="one answer per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, description="not supported: the model stops at its own end token")


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "vary"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- errors in OpenAI's shape ---------------------------------------------------------------------------------
ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error",
               415: "invalid_request_error", 422: "invalid_request_error", 503: "server_error"}  # fmt: skip


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None, headers=None):
    body = {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param, "code": code}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


class OpenAIError(HTTPException):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, headers=None):
        super().__init__(status, message, headers)
        self.param, self.code = param, code


class OpenAIRoute(APIRoute):
    """Routes whose errors (validation included) come back in OpenAI's shape, as its clients expect;
    the rest of the app keeps its own {"error", "status"} shape."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def handle(request: Request):
            try:
                return await handler(request)
            except RequestValidationError as exc:  # OpenAI answers malformed requests with 400
                return openai_error(400, *_validation_message(exc.errors()))
            except HTTPException as exc:
                param, code = getattr(exc, "param", None), getattr(exc, "code", None)
                return openai_error(exc.status_code, str(exc.detail), param, code, getattr(exc, "headers", None))

        return handle


def _validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """(message, param) for the most specific of pydantic's errors (a union reports one error per branch)."""
    if not errors:
        return "invalid request", None
    error = max(errors, key=lambda e: len(e.get("loc", ())))
    if error.get("type") == "json_invalid":
        return f"request body is not valid JSON ({error.get('ctx', {}).get('error', 'decode error')})", None
    # loc: ("body", "messages", 0, "content", "list[tagged-union[...]]", 0): drop "body" and pydantic's branch names
    param = ".".join(str(p) for p in error.get("loc", ())[1:] if not (isinstance(p, str) and "[" in p)) or None
    return f"{param or 'request body'}: {error.get('msg', 'invalid')}", param


# --- the endpoints ----------------------------------------------------------------------------------------------
def install_openai_routes(app: FastAPI, pipeline: BatchedPipeline, admission, max_image_bytes: int) -> None:
    """/v1/models and /v1/chat/completions over the server's batched pipeline and its admission queue."""
    created = int(time.time())

    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=pipeline.name, created=created)])

    async def chat_completions(body: ChatCompletionRequest, request: Request):
        """An OpenAI chat completion: one image (data: URL) and the last user message's text."""
        if body.model != pipeline.name:
            raise OpenAIError(404, f"model {body.model!r} does not exist; this server has {pipeline.name!r}",
                              "model", "model_not_found")  # fmt: skip
        if body.stop:
            raise OpenAIError(400, "stop sequences are not supported: the model stops at its own end token", "stop")
        image, instruction = _read_messages(body.messages, max_image_bytes)
        settings = _settings(pipeline, body)
        if not admission.try_acquire():
            busy = admission.busy_error()
            raise OpenAIError(503, busy.detail, code="server_busy", headers=busy.headers)
        start, held = time.perf_counter(), True
        try:
            if body.stream:
                stream = await to_thread.run_sync(
                    lambda: BatchedStream(pipeline.batcher, image, instruction, "chat", settings)
                )
                held = False  # the response gives the slot back when it ends, however it ends
                return _SlotStream(_chunks(stream, body, settings.max_new_tokens), admission, start,
                                   media_type="text/event-stream",
                                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
            job = await to_thread.run_sync(
                lambda: pipeline.batcher.submit(image, instruction, "chat", settings, threading.Event())
            )
            result = await _wait(job, request)
            return ChatCompletion(
                id=_completion_id(), created=int(time.time()), model=pipeline.name,
                choices=[Choice(message=AssistantMessage(content=result.text),
                                finish_reason=_finish_reason(result, settings.max_new_tokens))],
                usage=_usage(job.prompt_tokens, result.num_tokens),
            )  # fmt: skip
        except ImageError as err:
            raise OpenAIError(400, str(err), "messages", "invalid_image") from None
        finally:
            if held:
                admission.release(time.perf_counter() - start)

    # Added to the app's own router (not include_router) so they are plain routes with an OpenAIRoute class.
    add = partial(app.router.add_api_route, route_class_override=OpenAIRoute, tags=["OpenAI-compatible"])
    add("/v1/models", models, methods=["GET"], response_model=ModelList)
    add("/v1/chat/completions", chat_completions, methods=["POST"], response_model=ChatCompletion,
        responses={200: {"content": {"text/event-stream": {}}}})  # fmt: skip


def _read_messages(messages: list[Message], max_image_bytes: int) -> tuple[bytes, str]:
    """(the image, the instruction) from the conversation: exactly one image; the last user message's text."""
    urls = [part.image_url.url for m in messages if isinstance(m.content, list)
            for part in m.content if isinstance(part, ImagePart)]  # fmt: skip
    if not urls:
        raise OpenAIError(400, "the messages hold no image: add an image_url part with a data: URL", "messages")
    if len(urls) > 1:
        raise OpenAIError(400, f"the messages hold {len(urls)} images; the model reads one per request", "messages")
    user = [m for m in messages if m.role == "user"]
    if not user:
        raise OpenAIError(400, "the messages need a user message", "messages")
    content = user[-1].content
    text = content if isinstance(content, str) else "\n".join(p.text for p in content or [] if isinstance(p, TextPart))
    return _decode_data_url(urls[0], max_image_bytes), text.strip() or TASK_PROMPTS["ocr"]


def _decode_data_url(url: str, max_bytes: int) -> bytes:
    if url.startswith(("http://", "https://")):
        raise OpenAIError(400, "remote image URLs are not fetched: send the image inline as a data: URL "
                          "(data:image/png;base64,...)", "messages", "image_url_not_supported")  # fmt: skip
    match = DATA_URL.fullmatch(url)
    if match is None:
        raise OpenAIError(400, "image_url: expected a base64 data: URL (data:image/png;base64,...)", "messages")
    payload = match["data"]
    if len(payload) * 3 // 4 > max_bytes:
        raise OpenAIError(413, f"image is over the {max_bytes / 2**20:g} MB limit", "messages", "image_too_large")
    try:
        image = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise OpenAIError(400, "image_url: the data: URL is not valid base64", "messages") from None
    if not image:
        raise OpenAIError(400, "image_url: empty image", "messages")
    return image


def _settings(pipeline: BatchedPipeline, body: ChatCompletionRequest):
    """The client may lower the server's token budget, not raise it; temperature 0/absent is greedy."""
    asked = body.max_completion_tokens or body.max_tokens
    budget = min(asked, pipeline.settings.max_new_tokens) if asked else pipeline.settings.max_new_tokens
    sample = bool(body.temperature)
    return dataclasses.replace(pipeline.settings, max_new_tokens=budget, do_sample=sample,
                               temperature=body.temperature if sample else 1.0,
                               top_p=body.top_p if sample and body.top_p else 1.0)  # fmt: skip


async def _wait(job, request: Request) -> Result:
    """The job's result; if the client goes away first, its row is cancelled (the batch goes on without it)."""
    future = asyncio.wrap_future(job.future)
    while not future.done():
        await asyncio.wait({future}, timeout=0.5)
        if not future.done() and await request.is_disconnected():
            job.cancel.set()
    return future.result()


async def _chunks(stream: BatchedStream, body: ChatCompletionRequest, budget: int) -> AsyncIterator[str]:
    """chat.completion.chunk events: the role, text deltas, the finish reason, usage (if asked), [DONE]."""
    ident, created, model = _completion_id(), int(time.time()), body.model

    def chunk(delta: dict, finish_reason: str | None = None, **extra) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        event = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [choice], **extra}  # fmt: skip
        return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        pieces = iter(stream)
        while (piece := await to_thread.run_sync(next, pieces, None)) is not None:
            yield chunk({"content": piece})
        yield chunk({}, _finish_reason(stream.result, budget))
        if body.stream_options and body.stream_options.include_usage:
            usage = _usage(stream.job.prompt_tokens, stream.result.num_tokens).model_dump()
            event = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [], "usage": usage}  # fmt: skip
            yield f"data: {json.dumps(event)}\n\n"
        yield "data: [DONE]\n\n"
    except Exception as err:  # the response has started: report in-band, as OpenAI-style servers do
        error = {"message": f"{err.__class__.__name__}: {err}", "type": "server_error", "param": None, "code": None}
        yield f"data: {json.dumps({'error': error})}\n\n"
    finally:
        stream.cancel()  # the client went away mid-answer (a no-op once it is done): free the row


class _SlotStream(StreamingResponse):
    """Gives its admission slot back when the response ends: done, failed, or the client gone before the start."""

    def __init__(self, content, admission, start: float, **kwargs):
        super().__init__(content, **kwargs)
        self.admission, self.start = admission, start

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.admission.release(time.perf_counter() - self.start)


def _finish_reason(result: Result, budget: int) -> str:
    return "length" if result.num_tokens >= budget and not result.truncated_by_loop_guard else "stop"


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)  # fmt: skip


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
