"""Inference throughput: `vary ocr` pages/s on a multi-page PDF, and HTTP API latency under concurrent clients.

Model: the `nano` preset with random weights and a BPE tokenizer trained here (nothing downloaded). Random
weights decode garbage and often fall into loops, so the in-process numbers disable the loop guard and fix
the work at --max-new-tokens per page; the CLI run uses the defaults a user gets (guard on).

    python benchmarks/bench_infer.py [--pages 16] [--max-new-tokens 128] [--clients 8] [--requests 4] [--max-batch 4 8]
    python benchmarks/bench_infer.py --only http [--threads 1]   # the server: batching off vs on, same clients

The default is torch's thread count (what `vary serve` runs with); on a shared, busy machine two OpenMP threads
on two oversubscribed cores wait on each other, which hurts batch-1 decoding most: --threads 1 shows the
batching gain without that effect.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pymupdf
import torch
import uvicorn

import vary
from vary.infer.batch import ocr_documents
from vary.infer.documents import open_documents
from vary.infer.generation import LoopGuardConfig
from vary.infer.pipeline import Pipeline
from vary.modeling.tokenizer import train_bpe_tokenizer
from vary.serve.app import create_app
from vary.serve.batching import Batcher

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "this",
    "are",
    "from",
    "at",
    "or",
    "an",
    "which",
    "document",
    "page",
    "table",
    "figure",
    "chart",
    "value",
    "total",
    "model",
    "vision",
    "vocabulary",
    "text",
    "results",
    "image",
    "section",
    "data",
]


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16))).capitalize() + "." for _ in range(n)]


def build_nano(folder: Path) -> Path:
    torch.manual_seed(0)
    tokenizer = train_bpe_tokenizer(sentences(4000) + [str(i) for i in range(1000)], vocab_size=8192)
    model = vary.VaryForCausalLM(vary.preset("nano", text_config={"vocab_size": len(tokenizer)})).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_pdf(path: Path, pages: int) -> Path:
    doc = pymupdf.open()
    lines = sentences(pages * 40, seed=1)
    for i in range(pages):
        page = doc.new_page(width=595, height=842)
        page.insert_textbox(pymupdf.Rect(50, 50, 545, 800), "\n".join(lines[i * 40 : (i + 1) * 40]), fontsize=10)
    doc.save(path)
    return path


def bench_cli(model: Path, pdf: Path, max_new_tokens: int) -> None:
    for batch_size in (1, 4):
        pipe = Pipeline.from_pretrained(model, max_new_tokens=max_new_tokens, loop_guard=LoopGuardConfig(enabled=False))
        docs = open_documents([pdf])
        pipe.run(next(iter(docs[0])).image(), max_new_tokens=8)  # warm-up
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            records = ocr_documents(pipe, docs, out=Path(out), batch_size=batch_size, progress=False)
        seconds = time.perf_counter() - start
        tokens = sum(r["num_tokens"] for r in records)
        print(f"  in-process, batch {batch_size}: {len(records)} pages in {seconds:.2f} s = "
              f"{len(records) / seconds:.2f} pages/s ({tokens / seconds:.0f} new tokens/s, {max_new_tokens}/page)")  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        command = [
            "vary",
            "ocr",
            str(pdf),
            "--model",
            str(model),
            "--out",
            out,
            "--max-new-tokens",
            str(max_new_tokens),
        ]
        env = os.environ | {"OMP_NUM_THREADS": str(torch.get_num_threads())}  # same threads as in-process
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        seconds = time.perf_counter() - start
        written = len(list(Path(out).iterdir()))
    print(f"  `vary ocr` (subprocess, guard on, batch 4): {written} pages in {seconds:.2f} s wall incl. start-up "
          f"= {written / seconds:.2f} pages/s; it reports: {done.stderr.strip().splitlines()[-1]}")  # fmt: skip


def bench_http(pipe: Pipeline, png: bytes, clients: int, requests: int, max_batch: int) -> dict:
    """`clients` threads, each sending `requests` one after the other to a fresh server batching up to `max_batch`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(pipe, queue_size=clients, max_batch=max_batch)
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/v1/ocr"

    def client(_: int) -> list[tuple[int, float]]:
        out = []
        with httpx.Client(timeout=600) as http:
            for _ in range(requests):
                start = time.perf_counter()
                status = http.post(url, files={"file": ("page.png", png)}).status_code
                out.append((status, time.perf_counter() - start))
        return out

    httpx.post(url, files={"file": ("page.png", png)}, timeout=600)  # warm-up
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - start
    server.should_exit = True
    thread.join()
    batches = {x.name: x.value for x in app.state.metrics.batch_size.collect()[0].samples}
    latencies = sorted(t for status, t in results if status == 200)
    return {
        "max_batch": max_batch,
        "statuses": {s: sum(1 for st, _ in results if st == s) for s in {st for st, _ in results}},
        "rows_per_batch": (batches["vary_batch_size_sum"] - 1) / max(batches["vary_batch_size_count"] - 1, 1),
        "p50": statistics.median(latencies),
        "p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "max": latencies[-1],
        "rps": len(latencies) / wall,
    }


def bench_early_return(pipe: Pipeline, png: bytes, budgets=(16, 32, 64, 128)) -> None:
    """One batch of rows with different budgets: each row's result is out when it is done, not at the batch end."""
    settings = dataclasses.replace(pipe.settings, loop_guard=LoopGuardConfig(enabled=False))
    batcher = Batcher(pipe, max_batch=len(budgets), window_ms=1000)
    start = time.perf_counter()
    jobs = [batcher.submit(png, pipe.instruction("ocr"), "ocr", dataclasses.replace(settings, max_new_tokens=n))
            for n in budgets]  # fmt: skip
    done = {}
    for job in jobs:
        job.future.add_done_callback(lambda _, job=job: done.setdefault(id(job), time.perf_counter() - start))
    for job in jobs:
        job.future.result()
    print(f"  one batch of {len(budgets)} rows, budgets {'/'.join(map(str, budgets))} tokens: results out after "
          + ", ".join(f"{done[id(j)]:.2f} s" for j in jobs))  # fmt: skip


def http_label(max_batch: int) -> str:
    return f"batching on  (--max-batch {max_batch})" if max_batch > 1 else "batching off (--max-batch 1)"


def bench_http_rounds(model: Path, args) -> None:
    """Off and on alternate, `--rounds` times, so that load from other processes hits every setting alike."""
    pipe = Pipeline.from_pretrained(model, max_new_tokens=args.max_new_tokens,
                                    loop_guard=LoopGuardConfig(enabled=False))  # fmt: skip
    pdf = pymupdf.open()
    pdf.new_page().insert_text((72, 72), "\n".join(sentences(30, seed=2)), fontsize=10)
    png = pdf[0].get_pixmap(dpi=100).tobytes("png")
    print(f"HTTP API (/v1/ocr, uvicorn in-process): {args.clients} concurrent clients x {args.requests} requests "
          f"(one image page, {args.max_new_tokens} new tokens each), batching off and on alternating:")  # fmt: skip
    bench_early_return(pipe, png)
    runs: dict[int, list[dict]] = {}
    for round_ in range(args.rounds):
        for max_batch in (1, *args.max_batch):
            r = bench_http(pipe, png, args.clients, args.requests, max_batch)
            runs.setdefault(max_batch, []).append(r)
            print(f"  round {round_ + 1} {http_label(max_batch)}: {r['rps']:.2f} requests/s, latency p50 {r['p50']:.2f} s "
                  f"p95 {r['p95']:.2f} s max {r['max']:.2f} s, {r['rows_per_batch']:.2f} rows per batch, "
                  f"status counts {r['statuses']}, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    off = runs[1]
    print(f"  median of {args.rounds} round(s):")
    for max_batch, rs in runs.items():
        rps, p95 = statistics.median(r["rps"] for r in rs), statistics.median(r["p95"] for r in rs)
        ratios = sorted(r["rps"] / o["rps"] for r, o in zip(rs, off, strict=True))
        print(f"    {http_label(max_batch)}: {rps:.2f} requests/s, p95 {p95:.2f} s"
              + (f"; x{statistics.median(ratios):.2f} the requests/s of batching off in the same round "
                 f"(range x{ratios[0]:.2f}-x{ratios[-1]:.2f})" if max_batch > 1 else ""))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[4, 8], help="server batch sizes, batching on")
    parser.add_argument("--rounds", type=int, default=3, help="HTTP: rounds of off/on runs (medians are reported)")
    parser.add_argument("--only", choices=["cli", "http"], default=None, help="run one part only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging

    logging.disable_progress_bar()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} (other processes skew timings), Python {sys.version.split()[0]}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        model = build_nano(Path(tmp) / "nano")
        config = vary.load_model(model).config
        print(f"model: nano preset, random weights, {config.image_size}px, {config.image_token_len} image tokens")
        if args.only != "http":
            pdf = build_pdf(Path(tmp) / "doc.pdf", args.pages)
            print(f"vary ocr on a {args.pages}-page PDF:")
            bench_cli(model, pdf, args.max_new_tokens)
        if args.only != "cli":
            bench_http_rounds(model, args)


if __name__ == "__main__":
    main()
