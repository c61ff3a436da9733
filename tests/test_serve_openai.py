"""OpenAI-compatible API and /metrics: the official `openai` client against a server started on 127.0.0.1.

The model is a tiny random-weight one with a conversation template (it reads the instruction), so every
answer can be compared exactly with the Pipeline run directly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import threading
import time

import httpx
import openai
import pytest
import uvicorn

from conftest import make_tiny_model_dir
from test_infer_documents import TEXT_AS_PNG, make_png
from test_serve_api import BlockingPipeline
from vary.infer.pipeline import Pipeline
from vary.serve.app import create_app

PNG = make_png()
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
QUESTION = "What is the title of this page?"


def user(text: str | None = QUESTION, url: str = DATA_URL) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}}] + ([{"type": "text", "text": text}] if text else [])
    return [{"role": "system", "content": "You read documents."}, {"role": "user", "content": parts}]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    folder = make_tiny_model_dir(tmp_path_factory.mktemp("tiny_vicuna"), seed=3, template="vicuna_v1")
    return Pipeline.from_pretrained(folder, max_new_tokens=40)


@contextlib.contextmanager
def serving(app):
    """uvicorn on a free 127.0.0.1 port in a thread; yields the base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(pipeline):
    with serving(create_app(pipeline, max_upload_mb=0.5, queue_size=4, max_batch=4, batch_window_ms=10)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="not-checked", max_retries=0, timeout=60)


def expected(pipeline: Pipeline, text: str, max_new_tokens: int):
    return pipeline.generate([PNG], text, "chat", max_new_tokens=max_new_tokens)[0]


# --- the official client ------------------------------------------------------------------------------------
def test_models_lists_the_loaded_model(client, pipeline):
    (card,) = client.models.list().data
    assert card.id == pipeline.name and card.object == "model"


def test_chat_completion(client, pipeline):
    completion = client.chat.completions.create(model=pipeline.name, messages=user(), max_tokens=25, temperature=0)
    (choice,) = completion.choices
    answer = expected(pipeline, QUESTION, 25)
    assert choice.message.role == "assistant" and choice.message.content == answer
    assert choice.finish_reason == ("length" if answer.num_tokens == 25 else "stop")
    prompt_tokens = pipeline.processor([PNG], QUESTION)["input_ids"].shape[1]
    assert completion.usage.prompt_tokens == prompt_tokens and completion.usage.completion_tokens == answer.num_tokens
    assert completion.usage.total_tokens == prompt_tokens + answer.num_tokens
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")


def test_text_is_the_instruction_and_no_text_means_ocr(client, pipeline):
    other = client.chat.completions.create(model=pipeline.name, messages=user("Read."), max_completion_tokens=25)
    plain = client.chat.completions.create(model=pipeline.name, messages=user(None), max_completion_tokens=25)
    assert other.choices[0].message.content == expected(pipeline, "Read.", 25)
    assert plain.choices[0].message.content == pipeline.ocr(PNG, max_new_tokens=25)


def test_streaming(client, pipeline):
    stream = client.chat.completions.create(model=pipeline.name, messages=user(), max_tokens=30, stream=True,
                                            stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks) and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    answer = expected(pipeline, QUESTION, 30)
    assert len(pieces) > 1 and "".join(pieces) == answer  # incremental, and adds up to the plain answer
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == answer.num_tokens


def test_stream_ends_with_done(server, pipeline):
    body = {"model": pipeline.name, "messages": user(), "max_tokens": 5, "stream": True}
    text = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60).text
    assert text.startswith("data: {") and text.endswith("data: [DONE]\n\n")


def test_requests_with_text_content_and_curl_style_json(server, pipeline):
    body = {"model": pipeline.name, "max_tokens": 10, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Read."},
                                     {"type": "image_url", "image_url": {"url": DATA_URL, "detail": "high"}}]},
    ], "user": "someone"}  # fmt: skip
    response = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == expected(
        pipeline, "Read.", 10
    )


def test_a_body_that_is_not_json_is_400(server):
    response = httpx.post(
        f"{server}/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "change, error, status, message",
    [({"model": "gpt-4o"}, openai.NotFoundError, 404, "does not exist"),
     ({"messages": user(url="https://example.com/page.png")}, openai.BadRequestError, 400, "remote image URLs are not fetched"),
     ({"messages": user(url="data:image/png;base64,%%%")}, openai.BadRequestError, 400, "not valid base64"),
     ({"messages": user(url="data:image/png;base64," + base64.b64encode(TEXT_AS_PNG).decode())},
      openai.BadRequestError, 400, "not a readable image"),
     ({"messages": [{"role": "user", "content": "no image here"}]}, openai.BadRequestError, 400, "no image"),
     ({"messages": user() + user()}, openai.BadRequestError, 400, "one per request"),
     ({"n": 2}, openai.BadRequestError, 400, "n:"),
     ({"stop": ["\n"]}, openai.BadRequestError, 400, "stop sequences are not supported"),
     ({"messages": []}, openai.BadRequestError, 400, "messages:"),
     ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, openai.BadRequestError, 400,
      "messages.0.content.0: Input tag 'input_audio' found using 'type' does not match"),
     ({"max_tokens": 0}, openai.BadRequestError, 400, "max_tokens:")],
)  # fmt: skip
def test_errors_in_openai_shape(client, pipeline, change, error, status, message):
    request = {"model": pipeline.name, "messages": user(), "max_tokens": 5} | change
    with pytest.raises(error) as caught:
        client.chat.completions.create(**request)
    assert caught.value.status_code == status and message in caught.value.message
    body = caught.value.response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["type"].endswith("_error")


def test_oversize_image_is_413(client, pipeline):
    big = "data:image/png;base64," + base64.b64encode(b"\0" * 600_000 + PNG).decode()  # over the 0.5 MB limit
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=pipeline.name, messages=user(url=big))
    assert caught.value.status_code == 413


class WaitsForCancel(Pipeline):
    """Starts its first batch only once the batch's first row was cancelled (or after 30 s); records which."""

    def __init__(self, base: Pipeline):
        super().__init__(base.model, base.processor, base.settings, base.name)
        self.cancelled: list[bool] = []

    def _generate(self, batch, task, streamer, cancel, settings, watcher=None):
        if not self.cancelled:
            self.cancelled.append(watcher.__self__.jobs[0].cancel.wait(timeout=30))
        return super()._generate(batch, task, streamer, cancel, settings, watcher)


def test_client_gone_cancels_its_row(pipeline):
    waiting = WaitsForCancel(pipeline)
    app = create_app(waiting, queue_size=1)
    body = {"model": pipeline.name, "messages": user(), "max_tokens": 30}
    with serving(app) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/chat/completions", json=body, timeout=1)  # the client gives up and disconnects
        deadline = time.monotonic() + 30
        while app.state.admission.in_use and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waiting.cancelled == [True] and app.state.admission.in_use == 0  # cancelled, slot given back
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).status_code == 200


# --- batching across requests, queue limit and metrics (in-process ASGI) -----------------------------------
@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_concurrent_requests_share_a_batch_and_match_running_alone(pipeline):
    app = create_app(pipeline, queue_size=4, max_batch=4, batch_window_ms=5000)  # a batch forms once 4 are queued
    questions = ["Read.", QUESTION, "Convert the image to markdown format, every line of it.", "x"]
    budgets = [12, 30, 20, 6]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60) as http:
        responses = await asyncio.gather(*(
            http.post("/v1/chat/completions", json={"model": pipeline.name, "messages": user(q), "max_tokens": n})
            for q, n in zip(questions, budgets, strict=True)))  # fmt: skip
        metrics = (await http.get("/metrics")).text
    answers = [r.json()["choices"][0]["message"]["content"] for r in responses]
    assert answers == [expected(pipeline, q, n) for q, n in zip(questions, budgets, strict=True)]
    assert "vary_batch_size_count 1.0" in metrics and "vary_batch_size_sum 4.0" in metrics
    tokens = sum(r.json()["usage"]["completion_tokens"] for r in responses)
    assert f"vary_generated_tokens_total {tokens:.1f}" in metrics
    assert 'vary_requests_total{endpoint="/v1/chat/completions",method="POST",status="200"} 4.0' in metrics
    assert 'vary_request_seconds_bucket{endpoint="/v1/chat/completions",le="+Inf"} 4.0' in metrics
    assert "vary_queue_in_use 0.0" in metrics and "vary_queue_capacity 4.0" in metrics


@pytest.mark.anyio
async def test_queue_full_is_503_in_openai_shape_and_counted(pipeline):
    blocking = BlockingPipeline(pipeline)
    app = create_app(blocking, queue_size=1)
    body = {"model": pipeline.name, "messages": user(), "max_tokens": 5}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60) as http:
        first = asyncio.create_task(http.post("/v1/chat/completions", json=body))
        while not blocking.entered.is_set():
            await asyncio.sleep(0.01)
        busy = await http.post("/v1/chat/completions", json=body)
        assert busy.status_code == 503 and int(busy.headers["Retry-After"]) >= 1
        assert busy.json()["error"]["code"] == "server_busy" and "busy" in busy.json()["error"]["message"]
        blocking.release.set()
        assert (await first).status_code == 200
        metrics = (await http.get("/metrics")).text
    assert 'vary_requests_total{endpoint="/v1/chat/completions",method="POST",status="503"} 1.0' in metrics
    assert 'vary_requests_total{endpoint="/v1/chat/completions",method="POST",status="200"} 1.0' in metrics


@pytest.mark.anyio
async def test_existing_endpoints_are_batched_and_counted(pipeline):
    app = create_app(pipeline, queue_size=4, max_batch=2, batch_window_ms=5000)
    chat = {"image": DATA_URL, "question": QUESTION, "max_new_tokens": 15}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60) as http:
        responses = await asyncio.gather(http.post("/v1/chat", json=chat), http.post("/v1/chat", json=chat))
        await http.get("/nope")
        metrics = (await http.get("/metrics")).text
    assert [r.json()["message"]["content"] for r in responses] == [expected(pipeline, QUESTION, 15)] * 2
    assert "vary_batch_size_count 1.0" in metrics and "vary_batch_size_sum 2.0" in metrics
    assert 'vary_requests_total{endpoint="/v1/chat",method="POST",status="200"} 2.0' in metrics
    assert 'vary_requests_total{endpoint="unmatched",method="GET",status="404"} 1.0' in metrics
