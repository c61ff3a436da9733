"""HTTP API (httpx against the ASGI app): success, bad files, size limit, queue full, chat, streaming, errors.

Every endpoint runs the real tiny random-weight model, except the queue-full test, whose pipeline blocks
on an Event so that "one request in flight, the next one refused" is deterministic.
"""

from __future__ import annotations

import base64
import json
import threading

import anyio
import httpx
import pytest

from test_infer_documents import TEXT_AS_PNG, make_corrupt_pdf, make_pdf, make_png, make_png_bomb
from vary.infer.pipeline import Pipeline
from vary.serve.app import create_app

pytestmark = pytest.mark.anyio
PNG = make_png()


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir) -> Pipeline:
    return Pipeline.from_pretrained(tiny_model_dir, max_new_tokens=24)


@pytest.fixture
async def client(pipeline):
    app = create_app(pipeline, max_upload_mb=0.5, queue_size=2, max_pages=5)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield c


def upload(name: str, data: bytes, **fields) -> dict:
    return {"files": {"file": (name, data)}, "data": {k: str(v) for k, v in fields.items()}}


def assert_error(response: httpx.Response, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] == status and text in body["error"], body


# --- success ----------------------------------------------------------------------------------------------
async def test_health(client, pipeline):
    body = (await client.get("/health")).json()
    assert body["status"] == "ok" and body["model"] == pipeline.name and body["template"] == "plain"
    assert body["queue"] == {"capacity": 2, "in_use": 0}


async def test_ocr_image(client, pipeline):
    response = await client.post("/v1/ocr", **upload("page.png", PNG))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "ocr" and body["source"] == "page.png"
    (page,) = body["pages"]
    assert page["page"] is None and page["text"] == pipeline.ocr(PNG)
    assert isinstance(page["truncated_by_loop_guard"], bool) and page["num_tokens"] > 0


async def test_ocr_pdf_pages(client):
    response = await client.post("/v1/ocr", **upload("doc.pdf", make_pdf(4), pages="2,4", task="markdown"))
    assert response.status_code == 200, response.text
    assert [p["page"] for p in response.json()["pages"]] == [2, 4]


async def test_clients_can_lower_the_token_budget_but_not_raise_it(client):
    small = await client.post("/v1/ocr", **upload("page.png", PNG, max_new_tokens=3))
    large = await client.post("/v1/ocr", **upload("page.png", PNG, max_new_tokens=100_000))
    assert small.json()["pages"][0]["num_tokens"] == 3
    assert large.json()["pages"][0]["num_tokens"] <= 24  # the server's default budget (fixture)


async def test_chart_task_reports_unparsable_answers(client):
    response = await client.post("/v1/ocr", **upload("chart.png", PNG, task="chart"))
    (page,) = response.json()["pages"]
    assert page["chart"] is None and "python-dict" in page["error"]


async def test_chat_json_and_multipart(client, pipeline):
    messages = [{"role": "user", "content": "What is the title?"}]
    image = "data:image/png;base64," + base64.b64encode(PNG).decode()
    as_json = await client.post("/v1/chat", json={"image": image, "messages": messages})
    as_form = await client.post("/v1/chat", files={"image": ("p.png", PNG)}, data={"messages": json.dumps(messages)})
    for response in (as_json, as_form):
        assert response.status_code == 200, response.text
        assert response.json()["message"]["role"] == "assistant"
    expected = pipeline.generate([PNG], "What is the title?")[0]
    assert as_json.json()["message"]["content"] == as_form.json()["message"]["content"] == expected


async def test_stream_events(client, pipeline):
    response = await client.post("/v1/ocr/stream", **upload("doc.pdf", make_pdf(2), max_new_tokens=40))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [(block.split("\n")[0].removeprefix("event: "), json.loads(block.split("\n")[1].removeprefix("data: ")))
              for block in response.text.strip().split("\n\n")]  # fmt: skip
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "page" and kinds[-1] == "end" and kinds.count("done") == 2 and kinds.count("delta") > 2
    done = [data for kind, data in events if kind == "done"]
    assert [d["page"] for d in done] == [1, 2]
    page1 = "".join(data["text"] for kind, data in events if kind == "delta" and data["page"] == 1)
    assert page1.strip().startswith(done[0]["text"].rstrip("\ufffd"))  # streamed text = the result (+ its loop)
    assert (await client.get("/health")).json()["queue"]["in_use"] == 0  # the stream gave its slot back


async def test_openapi_docs(client):
    spec = (await client.get("/openapi.json")).json()
    assert {"/v1/ocr", "/v1/ocr/stream", "/v1/chat", "/health"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/chat"]["post"]["requestBody"]["content"]
    assert (await client.get("/docs")).status_code == 200


async def test_demo_page_is_served(client):
    page = await client.get("/")
    assert page.status_code == 200 and 'id="answer"' in page.text and "/static/app.js" in page.text
    script = await client.get("/static/app.js")
    assert script.status_code == 200 and "/v1/ocr/stream" in script.text


# --- bad input --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, data, fields, message",
    [("notes.png", TEXT_AS_PNG, {}, "notes.png: neither an image nor a PDF"),
     ("empty.png", b"", {}, "empty.png: empty file"),
     ("bad.pdf", make_corrupt_pdf(), {}, "bad.pdf: corrupt PDF"),
     ("locked.pdf", make_pdf(1, encrypt=True), {}, "password-protected"),
     ("doc.pdf", make_pdf(3), {"pages": "2-7"}, "page 7 is out of range"),
     ("doc.pdf", make_pdf(8), {}, "8 pages selected, at most 5"),
     ("bomb.png", make_png_bomb(), {}, "100 megapixels is over the 64 MP limit"),
     ("page.png", PNG, {"task": "poem"}, "task: Input should be"),
     ("page.png", PNG, {"task": "ask"}, "needs a question")],
)  # fmt: skip
async def test_unreadable_or_invalid_is_422(client, name, data, fields, message):
    assert_error(await client.post("/v1/ocr", **upload(name, data, **fields)), 422, message)


async def test_stream_rejects_bad_files_before_streaming(client):
    assert_error(await client.post("/v1/ocr/stream", **upload("x.png", TEXT_AS_PNG)), 422, "neither an image")


async def test_chat_errors(client):
    image = base64.b64encode(PNG).decode()
    assert_error(await client.post("/v1/chat", json={"image": image}), 422, "needs 'question'")
    assert_error(await client.post("/v1/chat", json={"image": "%%%", "question": "q"}), 422, "not valid base64")
    empty = base64.b64encode(TEXT_AS_PNG).decode()
    assert_error(await client.post("/v1/chat", json={"image": empty, "question": "q"}), 422, "not a readable image")
    assert_error(await client.post("/v1/chat", content=b"hi", headers={"content-type": "text/plain"}), 415, "send")


async def test_oversize_upload_is_413(client):
    big = b"\0" * (530 * 1024)  # over 0.5 MB, within the multipart slack: refused after reading
    assert_error(await client.post("/v1/ocr", **upload("big.png", big)), 413, "over the 0.5 MB limit")
    huge = b"\0" * (3 * 1024 * 1024)  # Content-Length far over: refused before the body is parsed
    assert_error(await client.post("/v1/ocr", **upload("huge.png", huge)), 413, "MB is over the 0.5 MB upload limit")
    image = base64.b64encode(big).decode()
    assert_error(await client.post("/v1/chat", json={"image": image, "question": "q"}), 413, "limit")


async def test_unknown_route_is_json(client):
    assert_error(await client.get("/nope"), 404, "Not Found")


# --- queue full ---------------------------------------------------------------------------------------------
class BlockingPipeline(Pipeline):
    """Holds every run until `release` is set, so the test controls how many requests are in flight."""

    def __init__(self, base: Pipeline):
        super().__init__(base.model, base.processor, base.settings, base.name)
        self.entered, self.release = threading.Event(), threading.Event()

    def _generate(self, *args, **kwargs):  # where the server's batcher runs the model
        self.entered.set()
        assert self.release.wait(timeout=30), "test never released the pipeline"
        return super()._generate(*args, **kwargs)


async def test_queue_full_is_503_with_retry_after(pipeline):
    blocking = BlockingPipeline(pipeline)
    app = create_app(blocking, queue_size=1)
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        anyio.create_task_group() as tg,
    ):
        first: dict = {}

        async def first_request():
            first["response"] = await client.post("/v1/ocr", **upload("page.png", PNG))

        tg.start_soon(first_request)
        while not blocking.entered.is_set():  # the first request now holds the only slot
            await anyio.sleep(0.01)
        busy = await client.post("/v1/ocr", **upload("page.png", PNG))
        assert_error(busy, 503, "busy")
        assert int(busy.headers["Retry-After"]) >= 1
        assert (await client.get("/health")).json()["queue"]["in_use"] == 1  # the event loop is still free
        blocking.release.set()
    assert first["response"].status_code == 200
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        after = await client.post("/v1/ocr", **upload("p.png", PNG))
    assert after.status_code == 200  # the slot was given back
