"""The demo page in a real browser: Debian chromium driven by Playwright uploads an image and sees the answer.

Playwright drives the system chromium (scripts/setup.sh --dev installs it); it never downloads a browser.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
import uvicorn
from playwright.sync_api import expect, sync_playwright

from test_infer_documents import make_pdf, make_png
from vary.infer.pipeline import Pipeline
from vary.serve.app import create_app

pytestmark = pytest.mark.slow  # starts Chromium

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """The app on 127.0.0.1:<free port>, served by uvicorn in a thread."""
    pipeline = Pipeline.from_pretrained(tiny_model_dir, max_new_tokens=32)
    port = free_port()
    config = uvicorn.Config(create_app(pipeline), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(server):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(30_000)
        yield page
        browser.close()


def test_upload_image_and_see_the_answer(server, page, tmp_path):
    image = tmp_path / "page.png"
    image.write_bytes(make_png())
    expected = httpx.post(f"{server}/v1/ocr", files={"file": ("page.png", image.read_bytes())}, timeout=60)
    expected_text = expected.json()["pages"][0]["text"]
    assert expected_text  # the tiny model says something, so "the answer appeared" is checkable

    page.goto(server)
    expect(page.locator("#model")).to_contain_text("plain template")  # the page asked /health
    page.set_input_files("#file", str(image))
    expect(page.locator("#question-row")).to_be_hidden()
    page.select_option("#task", "ask")
    expect(page.locator("#question-row")).to_be_visible()  # the question box appears for 'ask' only
    page.select_option("#task", "ocr")
    page.click("#run")
    expect(page.locator("#status")).to_contain_text("done", timeout=60_000)
    assert page.locator("#answer").text_content().startswith(expected_text)


def test_pdf_pages_and_errors_show_up(server, page, tmp_path):
    pdf = tmp_path / "doc.pdf"
    pdf.write_bytes(make_pdf(3))
    page.goto(server)
    page.set_input_files("#file", str(pdf))
    page.fill("#pages", "1,3")
    page.click("#run")
    expect(page.locator("#status")).to_contain_text("done (2 page(s)", timeout=60_000)
    answer = page.locator("#answer").text_content()
    assert "--- page 1 ---" in answer and "--- page 3 ---" in answer

    page.fill("#pages", "7")
    page.click("#run")
    expect(page.locator("#status")).to_contain_text("error 422: doc.pdf: page 7 is out of range")
