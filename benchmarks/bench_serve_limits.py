"""What hostile clients cost `vary serve` (issue 35): peak memory for a tiny PNG that claims 1 x 60,000,000
pixels, memory for a chunked 100 MB body, and how long a disconnected 50-page request keeps its queue slot.

    PYTHONPATH=src python benchmarks/bench_serve_limits.py

The server runs as its own process on 127.0.0.1 (uvicorn, the app of `vary serve`) over a tiny random-weight
model whose end-of-text tokens are suppressed and whose loop guard is off, so every page generates its full
`--max-new-tokens` budget: a stand-in for a real model reading a dense page. Memory is the server's, read
from /proc: its peak (VmHWM, reset before each case through /proc/PID/clear_refs) minus its RSS before.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from pathlib import Path
from struct import pack

MB = 2**20


# --- the server process ---------------------------------------------------------------------------------------
def make_model(folder: Path) -> Path:
    import torch

    from vary.config import preset
    from vary.modeling.tokenizer import train_bpe_tokenizer
    from vary.modeling.vary import VaryForCausalLM

    torch.manual_seed(0)
    tokenizer = train_bpe_tokenizer(["The quick brown fox jumps over the lazy dog. 0123456789"] * 50, vocab_size=300)
    config = preset(
        "nano",
        vision_config=dict(image_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                           window_size=8, global_attn_indexes=[1], output_channels=32),
        downsample_channels=[32, 64], image_token_len=16,
        text_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, ffn_dim=128,
                         word_embed_proj_dim=64, vocab_size=len(tokenizer), max_position_embeddings=4096),
    )  # fmt: skip
    VaryForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def serve(model: Path, port: int, max_new_tokens: int) -> None:
    import uvicorn

    from vary.infer.generation import LoopGuardConfig
    from vary.infer.pipeline import Pipeline
    from vary.serve.app import create_app

    pipeline = Pipeline.from_pretrained(model, max_new_tokens=max_new_tokens, loop_guard=LoopGuardConfig(enabled=False))
    pipeline.model.generation_config.suppress_tokens = sorted(pipeline._end_token_ids())  # every page runs long
    uvicorn.run(create_app(pipeline), host="127.0.0.1", port=port, log_level="warning")


# --- measuring ----------------------------------------------------------------------------------------------------
def proc_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Memory:
    """Server RSS before a case and its peak during it (MB)."""

    def __init__(self, pid: int):
        self.pid = pid

    def __enter__(self) -> Memory:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        self.before = proc_kb(self.pid, "VmRSS") / 1024
        return self

    def __exit__(self, *exc) -> None:
        self.peak = proc_kb(self.pid, "VmHWM") / 1024
        self.after = proc_kb(self.pid, "VmRSS") / 1024

    def line(self) -> str:
        return (f"server RSS {self.before:.0f} MB before, peak +{self.peak - self.before:.0f} MB, "
                f"+{self.after - self.before:.0f} MB after")  # fmt: skip


def request(port: int, head: str, body_parts, timeout: float = 600.0) -> tuple[int, str]:
    """Send a raw HTTP/1.1 request (body as an iterable of bytes); the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        try:
            for part in body_parts:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed: read its answer
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    status_line, _, rest = answer.partition(b"\r\n")
    status = int(status_line.split()[1]) if status_line else 0
    return status, rest.partition(b"\r\n\r\n")[2].decode(errors="replace")[:200]


def multipart(name: str, data: bytes, **fields) -> tuple[str, bytes]:
    boundary = "vary-bench-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]  # fmt: skip
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")  # fmt: skip
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def post_file(port: int, path: str, name: str, data: bytes, **fields) -> tuple[int, str]:
    content_type, body = multipart(name, data, **fields)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")  # fmt: skip
    return request(port, head, [body])


def tall_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return pack(">I", len(data)) + kind + data + pack(">I", zlib.crc32(kind + data))

    header = pack(">IIBBBBB", 1, 60_000_000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b"")
    )


def chunked_json(total: int, piece: int = MB):
    """A /v1/chat JSON body of `total` bytes in HTTP chunks, made on the fly (the client holds 1 MB at a time)."""
    start, end = b'{"question": "q", "image": "', b'"}'
    filler = base64.b64encode(bytes(piece))[:piece]
    sent = 0
    for data in [start] + [filler] * ((total - len(start) - len(end)) // piece) + [end]:
        sent += len(data)
        yield b"%x\r\n" % len(data) + data + b"\r\n"
    yield b"0\r\n\r\n"


def pdf(pages: int) -> bytes:
    import pymupdf

    doc = pymupdf.open()
    for i in range(pages):
        doc.new_page().insert_text((72, 72), f"Page {i + 1}: the quick brown fox jumps over the lazy dog.")
    return doc.tobytes()


def queue_in_use(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
        return json.load(r)["queue"]["in_use"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", nargs=2, metavar=("MODEL", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--max-new-tokens", type=int, default=512, help="tokens per page (all of them generated)")
    parser.add_argument("--chunked-mb", type=int, default=100)
    parser.add_argument("--leave-after", type=float, default=3.0, help="seconds before the 50-page client leaves")
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), int(args.serve[1]), args.max_new_tokens)
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    model, port = make_model(tmp / "model"), free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(model), str(port),
                               "--max-new-tokens", str(args.max_new_tokens)])  # fmt: skip
    try:
        for _ in range(300):
            try:
                queue_in_use(port)
                break
            except OSError:
                time.sleep(0.2)
        print(f"server pid {server.pid} on 127.0.0.1:{port}, upload limit 20 MB, queue 4, "
              f"{args.max_new_tokens} tokens per page; {os.cpu_count()} CPUs")  # fmt: skip

        with Memory(server.pid) as mem:
            status, text = post_file(port, "/v1/ocr", "tall.png", tall_png())
        print(f"1 x 60,000,000 PNG ({len(tall_png())} bytes) -> {status} {text!r}\n  {mem.line()}")
        with Memory(server.pid) as mem:
            threads = [threading.Thread(target=post_file, args=(port, "/v1/ocr", "tall.png", tall_png()))
                       for _ in range(2)]  # fmt: skip
            [t.start() for t in threads]
            [t.join() for t in threads]
        print(f"  two at once: {mem.line()}")

        head = (f"POST /v1/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")  # fmt: skip
        with Memory(server.pid) as mem:
            status, text = request(port, head, chunked_json(args.chunked_mb * MB))
        print(f"chunked {args.chunked_mb} MB /v1/chat body -> {status} {text!r}\n  {mem.line()}")

        content_type, body = multipart("report.pdf", pdf(50))
        head = (f"POST /v1/ocr HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(head.encode() + body)
        time.sleep(args.leave_after)
        busy = queue_in_use(port)
        sock.close()
        left = time.perf_counter()
        while queue_in_use(port) and time.perf_counter() - left < 600:
            time.sleep(0.05)
        print(f"50-page /v1/ocr left after {args.leave_after:g} s (slots in use then: {busy}): "
              f"slot free {time.perf_counter() - left:.2f} s after the client went away")  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
