"""Full-size Vary-tiny on this CPU, plain transformers path vs the fast CPU path, side by side.

    python benchmarks/bench_model.py              # ~3-5 minutes on 2 cores
    python benchmarks/bench_model.py --quick      # one timed vision forward per path
    python benchmarks/bench_model.py --isa avx2   # MKL/oneDNN/ATen limited to AVX2 (emulates an AVX2-only CPU)

`vary-tiny` preset (SAM-B vision vocabulary at 1024x1024 + OPT-125M), random weights, float32, batch 1.
Each path runs in its own child process, so peak RSS is its own:
  1. a whole page: `generate` with the image and `</s><img>` + 256 `<imgpad>` + `</img>`, exactly 256 new tokens
     (greedy, eos disabled, KV cache). Decode tokens/s = tokens 2..256 over the time since the first token.
     Peak RSS is the process's maximum resident set over model build + this page.
  2. the vision-vocabulary forward alone, timed `--repeats` times after the page (which warms it up).
  3. a decode floor: one matrix-vector product per LM weight matrix, i.e. the fp32 weights (~0.5 GB for
     OPT-125M) streamed from memory once, as every decoded token must; batch-1 decoding is memory-bound.
Both paths get the same weights (same seed) and image; the greedy ids and vision outputs are compared at the end.
The machine may be shared: wall times are the minimum over repeats, and CPU seconds are printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"vision_s": 7.5, "decode_tok_s": 25.0, "peak_rss_gb": 2.0}
AVX2_ENV = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

CHILD = r"""
import json, resource, sys, time
import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from vary.config import preset
from vary.modeling.vary import VaryForCausalLM

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
torch.manual_seed(0)
model = VaryForCausalLM(preset(args["preset"])).eval()
if args["path"] == "fast":
    model.enable_fast_cpu_path()
rss_model_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
cfg = model.config
size = cfg.image_size
pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
prompt = [cfg.text_config.eos_token_id, cfg.image_start_token_id] + [cfg.image_patch_token_id] * cfg.image_token_len
input_ids = torch.tensor([prompt + [cfg.image_end_token_id]])


class Stamps(StoppingCriteria):
    # called once per generated token: wall and CPU time of each
    def __init__(self):
        self.wall, self.cpu = [], []

    def __call__(self, input_ids, scores, **kwargs):
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


new = args["new_tokens"]
stamps = Stamps()
start = time.perf_counter()
with torch.inference_mode():
    ids = model.generate(
        input_ids=input_ids, pixel_values=pixels, max_new_tokens=new, min_new_tokens=new, do_sample=False,
        eos_token_id=None, pad_token_id=cfg.text_config.pad_token_id, stopping_criteria=StoppingCriteriaList([stamps]),
    )
page_s = time.perf_counter() - start
rss_page_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
decode = len(stamps.wall) - 1

vision_wall, vision_cpu = [], []
with torch.inference_mode():
    for _ in range(args["repeats"]):
        wall, cpu = time.perf_counter(), time.process_time()
        features = model.vision_vocab(pixels)
        vision_wall.append(time.perf_counter() - wall)
        vision_cpu.append(time.process_time() - cpu)
# Decode floor: one matrix-vector product per LM weight matrix (what one token must read from memory), no attention.
linears = [m for m in model.language_model.modules() if isinstance(m, torch.nn.Linear)]
vectors = {n: torch.randn(1, n) for n in {m.in_features for m in linears}}
floor = []
with torch.inference_mode():
    for _ in range(args["floor_repeats"]):
        wall = time.perf_counter()
        for m in linears:
            m(vectors[m.in_features])
        floor.append(time.perf_counter() - wall)
torch.save({"ids": ids, "features": features}, args["outputs"])
steps = sorted(b - a for a, b in zip(stamps.wall, stamps.wall[1:]))
print(json.dumps({
    "vision_s": min(vision_wall), "vision_all_s": vision_wall, "vision_cpu_s": min(vision_cpu),
    "first_token_s": stamps.wall[0] - start,
    "decode_tok_s": decode / (stamps.wall[-1] - stamps.wall[0]),
    "decode_median_tok_s": 1 / steps[len(steps) // 2],
    "floor_tok_s": 1 / sorted(floor)[len(floor) // 2],
    "decode_cpu_ms_per_tok": 1e3 * (stamps.cpu[-1] - stamps.cpu[0]) / decode,
    "page_s": page_s, "new_tokens": ids.shape[1] - input_ids.shape[1],
    "rss_model_gb": rss_model_gb, "peak_rss_gb": rss_page_gb,
    "peak_rss_final_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
}))
"""


def run_path(path: str, args: argparse.Namespace, outputs: Path) -> dict:
    env = dict(os.environ, **(AVX2_ENV if args.isa == "avx2" else {}))
    spec = dict(path=path, threads=args.threads, preset=args.preset, new_tokens=args.new_tokens,
                repeats=args.repeats, floor_repeats=5 if args.quick else 20, outputs=str(outputs))  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{path} path failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["child_s"] = time.perf_counter() - started
    return result


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())  # fmt: skip
    flags = Path("/proc/cpuinfo").read_text()
    isa = "AVX-512" if " avx512f " in flags else "AVX2" if " avx2 " in flags else "no AVX2"
    return f"{model}, {os.cpu_count()} cores, {isa}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one timed vision forward per path (default 3)")
    parser.add_argument("--repeats", type=int, default=None, help="timed vision forwards per path")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--preset", default="vary-tiny")
    parser.add_argument("--isa", choices=["native", "avx2"], default="native")
    parser.add_argument("--paths", default="plain,fast", help="comma-separated: plain, fast")
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)

    import torch

    print(f"machine: {machine()}; torch {torch.__version__}; {args.threads} threads; ISA limit: {args.isa}")
    print(f"load average before: {os.getloadavg()[0]:.1f} (the machine may be shared; see CPU seconds)")
    paths = args.paths.split(",")
    results, outputs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            print(f"running {path} path ({args.preset}, {args.new_tokens} new tokens, {args.repeats} vision repeats)...",
                  flush=True)  # fmt: skip
            results[path] = run_path(path, args, Path(tmp) / f"{path}.pt")
            outputs[path] = torch.load(Path(tmp) / f"{path}.pt")
    print(f"load average after: {os.getloadavg()[0]:.1f}\n")

    rows = [
        ("vision vocabulary forward, 1024x1024 (s)", "vision_s", "{:.2f}", "lower", "vision_s"),
        ("  CPU seconds of that forward", "vision_cpu_s", "{:.2f}", "lower", None),
        ("first token incl. vision + prefill (s)", "first_token_s", "{:.2f}", "lower", None),
        (f"decode with KV cache, {args.new_tokens} new tokens (tok/s)", "decode_tok_s", "{:.1f}", "higher",
         "decode_tok_s"),
        ("  tokens/s from the median step time", "decode_median_tok_s", "{:.1f}", "higher", None),
        ("  CPU ms per decoded token", "decode_cpu_ms_per_tok", "{:.1f}", "lower", None),
        ("  floor: LM weights read once per token (tok/s)", "floor_tok_s", "{:.1f}", "higher", None),
        ("whole page: encode + prefill + decode (s)", "page_s", "{:.1f}", "lower", None),
        ("RSS after model build (GB)", "rss_model_gb", "{:.2f}", "lower", None),
        ("peak RSS, whole page (GB)", "peak_rss_gb", "{:.2f}", "lower", "peak_rss_gb"),
    ]  # fmt: skip
    header = f"{'':<52}" + "".join(f"{p:>10}" for p in paths) + ("   speed-up" if len(paths) == 2 else "") + "  target"
    print(header)
    for label, key, fmt, better, target in rows:
        line = f"{label:<52}" + "".join(f"{fmt.format(results[p][key]):>10}" for p in paths)
        if len(paths) == 2:
            a, b = (results[p][key] for p in paths)
            ratio = (a / b) if better == "lower" else (b / a)
            line += f"   {ratio:>7.2f}x"
        if target:
            sign = "<=" if better == "lower" else ">="
            line += f"  {sign} {TARGETS[target]}"
        print(line)

    if len(paths) == 2:
        (pa, a), (pb, b) = outputs.items()
        same_ids = torch.equal(a["ids"], b["ids"])
        diff = (a["features"] - b["features"]).abs().max().item()
        print(f"\ngreedy ids identical ({pa} vs {pb}, {results[pa]['new_tokens']} tokens): {same_ids}")
        print(f"vision features max |{pa} - {pb}|: {diff:.2e} (features up to {a['features'].abs().max().item():.2f})")
    for path in paths:
        times = ", ".join(f"{t:.2f}" for t in results[path]["vision_all_s"])
        print(f"{path}: vision forwards {times} s; child process {results[path]['child_s']:.0f} s")


if __name__ == "__main__":
    main()
