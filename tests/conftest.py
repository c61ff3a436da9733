"""Shared fixtures: tiny random-weight Vary models and their tokenizers, built in seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from vary.config import preset
from vary.data import prose
from vary.data.prose import load_passages
from vary.modeling.tokenizer import train_bpe_tokenizer
from vary.modeling.vary import VaryForCausalLM

# pytest-xdist runs one worker per core (addopts: -n 2); a worker's torch takes its share of the cores, not all
# of them, or two workers' thread pools fight over two cores (66 s against 61 s for the fast tier here).
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))

TOKENIZER_TEXT = [
    "The quick brown fox jumps over the lazy dog. 0123456789 Vary reads documents.",
    "Provide the OCR results of this image. Convert the image to markdown format.",
    "中文文本识别，图表转换为字典。这是一个自然图像。",
    "It's an image of nature. The dict of the chart is: {'title': 'Sales', 'data': {'a': 1.5}}",
]


def pytest_make_parametrize_id(config, val, argname):
    """File bytes are no test name: PDFs carry a random document id, and parallel workers must collect alike."""
    if isinstance(val, bytes):
        return f"{argname}-bytes"
    return None


def tiny_config(image_size: int = 256, vocab_size: int = 512, **overrides):
    """A Vary-tiny shape at toy size: 256px -> 16 image tokens, 2+2 layers of width 64."""
    return preset(
        "nano",
        vision_config=dict(image_size=image_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                           window_size=8, global_attn_indexes=[1], output_channels=32),
        downsample_channels=[32, 64],
        image_token_len=(image_size // 64) ** 2,
        text_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, ffn_dim=128,
                         word_embed_proj_dim=64, vocab_size=vocab_size, max_position_embeddings=512),
        **overrides,
    )  # fmt: skip


def make_tiny_model_dir(folder: Path, seed: int = 0, **overrides) -> Path:
    torch.manual_seed(seed)
    tokenizer = train_bpe_tokenizer(TOKENIZER_TEXT * 20, vocab_size=400)
    model = VaryForCausalLM(tiny_config(vocab_size=len(tokenizer), **overrides)).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny Vary-tiny (our format) with its own BPE tokenizer."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_vary"))


@pytest.fixture()
def one_thread():
    """Toy models are too small to split over threads; on a busy 2-core machine two OpenMP threads wait on
    each other for seconds per step. Training-test modules use it for every test (their `pytestmark`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- stand-ins for the Debian prose packages (vary.data.prose): small folders in their formats ------------
EN_FORTUNES = [
    f"Fortune number {i} says that the quick brown fox jumps over\n\tthe lazy dog {i} times." for i in range(60)
]
ZH_FORTUNES = [f"\x1b[32m《诗{i}》\x1b[m\n床前明月光，疑是地上霜。\n举头望明月，低头思故乡{i}。" for i in range(60)]


@pytest.fixture
def packages(tmp_path, monkeypatch):
    fortunes, docs = tmp_path / "fortunes", tmp_path / "html" / "library"
    fortunes.mkdir()
    docs.mkdir(parents=True)
    (fortunes / "wisdom").write_text("\n%\n".join(EN_FORTUNES) + "\n%\n", encoding="utf-8")
    (fortunes / "wisdom.dat").write_bytes(b"\x00\x01binary index")
    (fortunes / "art").write_text("  /\\_/\\\n ( o.o ) a cat drawn with characters\n%\n", encoding="utf-8")
    (fortunes / "tang300").write_text("\n%\n".join(ZH_FORTUNES), encoding="utf-8")
    (docs / "os.html").write_text(
        "<html><nav><p>Navigation</p></nav><body><p>The <code>os</code> module provides a portable way of "
        "using operating system dependent functionality &amp; more.</p><pre>import os</pre></body></html>",
        encoding="utf-8",
    )
    monkeypatch.setattr(prose, "FORTUNES_DIR", fortunes)
    monkeypatch.setattr(prose, "PYTHON_DOCS_DIR", tmp_path / "html")
    load_passages.cache_clear()
    yield fortunes, tmp_path / "html"
    load_passages.cache_clear()
