"""CPU speed of full-size Vary-tiny and GOT-OCR2 (random weights): float32 vs int8 vs bf16, and transformers' GOT.

    python benchmarks/bench_model.py                  # ~10 minutes on 2 cores
    python benchmarks/bench_model.py --quick          # ~4 minutes: fewer tokens, no 1,024-token page
    python benchmarks/bench_model.py --models got-ocr2 --configs int8,hf-fp32 --no-quality
    python benchmarks/bench_model.py --models vary-toy --configs fp32,int8 --no-quality   # 1.8 B: ~8 minutes

Every configuration runs in its own child process, so its peak RSS (ru_maxrss: model load + one page) is its own.
Ours load a random-weight checkpoint saved once per model (seed 0, in bf16 as the family's releases are) through
`vary.load_model`, with the fast CPU path on: `fp32`, `int8` (`quantize="int8"`, float32 vision: the CLI's `--quantize int8` on CPUs without native
bf16), `int8-bf16vision` (`quantize="int8", dtype=bfloat16`: int8 decoder, bf16 vision branch: the CLI's
`--quantize int8` where bf16 is native), `int8-released` (GOT-OCR2 only: `int8` from the same weights written in a released layout,
transformers' GotOcr2, which the int8 load renames tensor by tensor: its "RSS load GB" is the lean load of a
released checkpoint), `bf16` (both bf16 ones only where the CPU has native bf16, see
`vary.modeling.quantize.cpu_has_native_bf16`; elsewhere it is emulated and 15-30x slower). `hf-fp32` is
transformers' `GotOcr2ForConditionalGeneration` at GOT-OCR2's sizes (its default config), random weights;
`hf-int8` is that model after the stock recipe (torch.ao `quantize_dynamic` of its decoder Linears and lm_head):
the issue's calibration of what this CPU allows (34 tok/s where hf-fp32 ran 7.7).
Per configuration: one page = `generate` with a random 1024x1024 image and its 256 image tokens, greedy, eos
off, exactly --new-tokens new tokens (--page-tokens for GOT int8 and hf-*: the end-to-end page comparison).
  - vision s: the vision branches alone (Vary-toy: SAM + CLIP), timed once after the page (warm);
  - first token s: vision + prefill; decode tok/s: tokens 2..--new-tokens over their wall time (CPU ms/tok:
    their process CPU time per token, all threads: on a busy machine wall time rises, this less so);
  - page s: encode + prefill + all new tokens.
Quality (--quality, default on): greedy tokens and logits of int8 / bf16 against float32 on the same weights and
inputs, over --quality-tokens tokens: the conformance checkpoints ($VARY_CONFORMANCE_DIR, official random
weights, their image and prompt) and the full-size random models. "teacher-forced top-1" compares the argmax at
every position of float32's greedy sequence; "greedy same" is the fraction of positions where the free-running
greedy sequences agree (one early flip diverges the rest); logit drift is teacher-forced, next to the logits' std.
Random weights have flat logits (tiny top-1 margins), so agreement here is a pessimistic stand-in for a trained
model's. The machine may be shared: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = "vary-tiny int8 decode >= 2x fp32; GOT-OCR2 int8 decode >= 35 tok/s, peak RSS <= 1.5 GB; page >= 2x hf-fp32"
MODELS = ("vary-tiny", "got-ocr2", "vary-toy")
DEFAULT_MODELS = ("vary-tiny", "got-ocr2")  # vary-toy (1.8 B, 7.4 GB in float32) only when named
CONFIGS = ("fp32", "int8", "int8-bf16vision", "int8-released", "bf16", "hf-fp32", "hf-int8")
DEFAULT_CONFORMANCE = Path(__file__).resolve().parents[2] / "shared" / "conformance"
SRC = Path(__file__).resolve().parents[1] / "src"
NO_NATIVE_BF16 = False  # --no-native-bf16
sys.path.insert(0, str(SRC))  # this checkout's vary, in this process and (via PYTHONPATH) in the children


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


# --- child processes -----------------------------------------------------------------------------------------
def child_save(spec: dict) -> dict:
    """Save a random-weight checkpoint of the preset (seed 0) in bfloat16, as the family's releases are stored: what
    a user's load reads (the int8 load keeps 16-bit vision weights 16-bit, `quantize._cast_vision`)."""
    import torch

    from vary.config import preset
    from vary.modeling.vary import VaryForCausalLM

    torch.manual_seed(0)
    model = VaryForCausalLM(preset(spec["model"])).to(torch.bfloat16)
    model.save_pretrained(spec["checkpoint"])
    if spec.get("released"):
        from vary.modeling.got import export_hf_got

        export_hf_got(model, spec["released"])
    return {}


def load_ours(folder, variant: str, **overrides):
    import torch

    from vary.modeling.loading import load_model

    dtype = torch.bfloat16 if "bf16" in variant else torch.float32
    model = load_model(folder, dtype=dtype, quantize="int8" if "int8" in variant else None, **overrides)
    return model.eval().enable_fast_cpu_path()


def page_inputs(model, hf: bool):
    """A random 1024x1024 image and a prompt of exactly its image tokens (what the decoder reads per page); the
    images as generate() keyword arguments (Vary-toy: + a 224x224 CLIP view)."""
    import torch

    cfg = model.config
    generator = torch.Generator().manual_seed(1)
    if hf:
        size, n_image = cfg.vision_config.image_size, 256
        ids = [cfg.image_token_index] * n_image
    else:
        size = cfg.image_size
        ids = [cfg.image_start_token_id] + [cfg.image_patch_token_id] * cfg.image_token_len + [cfg.image_end_token_id]
    images = {"pixel_values": torch.randn(1, 3, size, size, generator=generator)}
    if not hf and cfg.clip_config is not None:
        clip = cfg.clip_config.image_size
        images["pixel_values_clip"] = torch.randn(1, 3, clip, clip, generator=generator)
    return torch.tensor([ids]), images


def child_time(spec: dict) -> dict:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    start = time.perf_counter()
    hf = spec["config"].startswith("hf-")
    if hf:
        from transformers import GotOcr2Config, GotOcr2ForConditionalGeneration

        torch.manual_seed(0)
        model = GotOcr2ForConditionalGeneration(GotOcr2Config()).eval()
        if spec["config"] == "hf-int8":  # the stock recipe: torch.ao dynamic int8 of every decoder Linear + lm_head
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
                for name in ("language_model", "lm_head"):
                    owner = model.model if name == "language_model" else model
                    quantized = torch.ao.quantization.quantize_dynamic(
                        torch.nn.Sequential(getattr(owner, name)), {torch.nn.Linear}, dtype=torch.qint8, inplace=True
                    )  # wrapped: quantize_dynamic swaps children, and lm_head is itself a Linear
                    setattr(owner, name, quantized[0])
    elif spec["config"] == "int8-released":
        model = load_ours(spec["released"], "int8")
    else:
        model = load_ours(spec["checkpoint"], spec["config"])
    load_s = time.perf_counter() - start
    rss_load = peak_rss_gb()
    input_ids, images = page_inputs(model, hf)
    images = {name: image.to(model.dtype) for name, image in images.items()}

    class Stamps(StoppingCriteria):  # called once per generated token
        def __init__(self):
            self.wall, self.cpu = [], []

        def __call__(self, input_ids, scores, **kwargs):
            self.wall.append(time.perf_counter())
            self.cpu.append(time.process_time())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    new, stamps = spec["new_tokens"], Stamps()
    pad = model.generation_config.pad_token_id or 0
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=input_ids, **images, max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, eos_token_id=None, pad_token_id=pad,
                       stopping_criteria=StoppingCriteriaList([stamps]))  # fmt: skip
    page_s = time.perf_counter() - start
    rss_page = peak_rss_gb()
    timed = min(len(stamps.wall), spec["decode_window"])
    with torch.inference_mode():
        vision = time.perf_counter()
        if hf:
            model.model.get_image_features(images["pixel_values"])
        else:
            model.encode_images(**images)
        vision_s = time.perf_counter() - vision
    return {
        "load_s": load_s, "vision_s": vision_s, "first_token_s": stamps.wall[0] - start,
        "decode_tok_s": (timed - 1) / (stamps.wall[timed - 1] - stamps.wall[0]),
        "decode_all_tok_s": (len(stamps.wall) - 1) / (stamps.wall[-1] - stamps.wall[0]),
        "decode_cpu_ms": 1e3 * (stamps.cpu[timed - 1] - stamps.cpu[0]) / (timed - 1),
        "page_s": page_s, "new_tokens": len(stamps.wall), "rss_load_gb": rss_load, "peak_rss_gb": rss_page,
    }  # fmt: skip


def conformance_inputs(case_dir: Path):
    """(load overrides, input_ids, pixel inputs) of a conformance case (see shared/conformance/README.md)."""
    import torch

    from vary.config import VaryConfig  # noqa: F401 - registers the config class
    from vary.modeling.official import load_official
    from vary.modeling.processor import VaryProcessor

    case = json.loads((case_dir / "case.json").read_text())
    preps = case["preprocess"]
    high = next(p for p in preps.values() if p.get("branch", "vision_vocabulary") != "clip" and "mean" in p)
    overrides = dict(image_mean=high["mean"], image_std=high["std"])
    clip = next((p for p in preps.values() if p.get("branch") == "clip"), None)
    if clip is not None:
        overrides |= dict(clip_image_mean=clip["mean"], clip_image_std=clip["std"])
    if "clip" in case:
        overrides["clip_num_attention_heads"] = case["clip"]["num_attention_heads"]
    processor = VaryProcessor(load_official(case_dir / "checkpoint", **overrides).config, tokenizer=None)
    pixels = {}
    for name, prep in preps.items():
        if "mean" not in prep:
            continue
        if prep.get("branch") == "clip":
            pixels["pixel_values_clip"] = processor.clip_tensor(case_dir / name)[None]
        else:
            pixels["pixel_values"] = processor.image_tensor(case_dir / name)[None]
    return overrides, torch.tensor([case["input_ids"]]), pixels


def child_quality(spec: dict) -> dict:
    """int8 and bf16 against float32: greedy agreement and teacher-forced logit drift, on the same inputs."""
    import torch

    n = spec["tokens"]
    from vary.modeling.official import CheckpointError

    if spec.get("case"):
        folder = Path(spec["case"]) / "checkpoint"
        try:
            overrides, input_ids, pixels = conformance_inputs(Path(spec["case"]))
        except CheckpointError as err:  # a family this checkout cannot load yet
            return {"skipped": str(err)}
    else:
        folder, overrides = spec["checkpoint"], {}
        model = load_ours(folder, "fp32")
        input_ids, pixels = page_inputs(model, hf=False)
        del model

    def run(variant):
        model = load_ours(folder, variant, **overrides)
        dtype = model.dtype
        inputs = {k: v.to(dtype) for k, v in pixels.items()}
        with torch.inference_mode():
            ids = model.generate(input_ids=input_ids, **inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)  # fmt: skip
            teacher = reference_ids if reference_ids is not None else ids
            logits = model(input_ids=teacher, **inputs, logits_to_keep=n + 1).logits[0, :-1].float()
        return ids[0, input_ids.shape[1] :], logits

    reference_ids = None
    ref_new, ref_logits = run("fp32")
    reference_ids = torch.cat([input_ids, ref_new[None]], dim=1)
    results = {}
    for variant in spec["variants"]:
        new, logits = run(variant)
        same = new == ref_new
        drift = (logits - ref_logits).abs()
        results[variant] = {
            "tf_top1": (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item(),
            "greedy_same": same.float().mean().item(),
            "first_diff": int(same.long().cumprod(0).sum()),
            "max_drift": drift.max().item(), "mean_drift": drift.mean().item(), "logit_std": ref_logits.std().item(),
        }  # fmt: skip
    return results


# --- parent ----------------------------------------------------------------------------------------------------
def run_child(spec: dict, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    spec = dict(spec, threads=threads, no_native_bf16=NO_NATIVE_BF16)
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env)  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"child {spec} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor())  # fmt: skip
    isa = "AVX-512" if " avx512f " in info else "AVX2" if " avx2 " in info else "no AVX2"
    extra = [flag for flag in ("avx512_bf16", "amx_bf16", "avx512_vnni") if f" {flag}" in info]
    return f"{model}, {os.cpu_count()} cores, {isa} ({', '.join(extra) or 'no bf16/VNNI'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="64 decode tokens, 256-token page, 64 quality tokens")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated: {', '.join(CONFIGS)}")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per page (default 128; quick 64)")
    parser.add_argument("--page-tokens", type=int, default=None,
                        help="tokens of the GOT int8 vs hf-fp32 page (default 1024; quick 256)")  # fmt: skip
    parser.add_argument("--quality-tokens", type=int, default=None, help="default 200; quick 64")
    parser.add_argument("--no-quality", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--conformance-dir", type=Path,
                        default=Path(os.environ.get("VARY_CONFORMANCE_DIR", DEFAULT_CONFORMANCE)))  # fmt: skip
    parser.add_argument("--no-native-bf16", action="store_true",
                        help="run ours as on a CPU without native bf16 (float32 vision under int8, no bf16 "
                             "configurations: the memory those CPUs see); the speeds stay this CPU's")  # fmt: skip
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        import torch

        torch.set_num_threads(spec["threads"])
        if spec.get("no_native_bf16"):
            from vary.modeling import quantize

            quantize.cpu_has_native_bf16 = lambda flags=None: False
        print(json.dumps({"save": child_save, "time": child_time, "quality": child_quality}[spec["kind"]](spec)))
        return
    quick = args.quick
    new_tokens = args.new_tokens or (64 if quick else 128)
    page_tokens = args.page_tokens or (256 if quick else 1024)
    quality_tokens = args.quality_tokens or (64 if quick else 200)
    models = [m for m in args.models.split(",") if m]
    configs = [c for c in args.configs.split(",") if c]
    if bad := [m for m in models if m not in MODELS] + [c for c in configs if c not in CONFIGS]:
        parser.error(f"unknown model/config {bad}")

    import torch

    from vary.modeling.quantize import cpu_has_native_bf16

    global NO_NATIVE_BF16
    NO_NATIVE_BF16 = args.no_native_bf16
    native_bf16 = cpu_has_native_bf16() and not NO_NATIVE_BF16
    if not native_bf16 and any("bf16" in c for c in configs):
        print(
            "bf16 configurations skipped: no native bf16 (AVX512_BF16/AMX, or --no-native-bf16), it would be emulated"
        )
        configs = [c for c in configs if "bf16" not in c]
    print(f"machine: {machine()}; torch {torch.__version__}; {args.threads} threads")
    print(f"load average before: {os.getloadavg()[0]:.2f} (the machine may be shared)", flush=True)
    started = time.perf_counter()
    timings, quality = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench_model_") as tmp:
        for model in models:
            checkpoint = str(Path(tmp) / model)
            released = str(Path(tmp) / f"{model}-transformers") if "int8-released" in configs else None
            print(f"{model}: saving a random-weight bf16 checkpoint...", flush=True)
            run_child({"kind": "save", "model": model, "checkpoint": checkpoint,
                       "released": released if model == "got-ocr2" else None}, args.threads)  # fmt: skip
            for config in configs:
                if config in ("hf-fp32", "hf-int8", "int8-released") and model != "got-ocr2":
                    continue
                long_page = model == "got-ocr2" and config in ("int8", "int8-bf16vision", "hf-fp32", "hf-int8")
                tokens = page_tokens if long_page else new_tokens
                print(f"{model} {config}: one page, {tokens} new tokens...", flush=True)
                spec = dict(kind="time", model=model, config=config, checkpoint=checkpoint, released=released,
                            new_tokens=tokens, decode_window=new_tokens)  # fmt: skip
                timings[model, config] = run_child(spec, args.threads)
            if not args.no_quality:
                print(f"{model}: quality, {quality_tokens} tokens...", flush=True)
                variants = [v for v in ("int8", "int8-bf16vision", "bf16") if "bf16" not in v or native_bf16]
                spec = dict(kind="quality", checkpoint=checkpoint, tokens=quality_tokens, variants=variants)
                quality[f"{model} (full size, random)"] = run_child(spec, args.threads)
        if not args.no_quality:
            cases = sorted(args.conformance_dir.glob("*/case.json"))
            if not cases:
                print(f"no conformance cases in {args.conformance_dir} (set VARY_CONFORMANCE_DIR)")
            for case in cases:
                print(f"conformance {case.parent.name}: quality...", flush=True)
                variants = [v for v in ("int8", "int8-bf16vision", "bf16") if "bf16" not in v or native_bf16]
                spec = dict(kind="quality", case=str(case.parent), tokens=quality_tokens, variants=variants)
                quality[f"conformance {case.parent.name}"] = run_child(spec, args.threads)
    print(f"load average after: {os.getloadavg()[0]:.2f}; {time.perf_counter() - started:.0f} s in all\n")
    report(timings, quality, new_tokens)


def report(timings: dict, quality: dict, new_tokens: int) -> None:
    cols = [("load s", "load_s", "{:.1f}"), ("vision s", "vision_s", "{:.2f}"),
            ("1st tok s", "first_token_s", "{:.2f}"), (f"tok/s@{new_tokens}", "decode_tok_s", "{:.1f}"),
            ("CPU ms/tok", "decode_cpu_ms", "{:.1f}"),
            ("tok/s all", "decode_all_tok_s", "{:.1f}"), ("tokens", "new_tokens", "{}"), ("page s", "page_s", "{:.1f}"),
            ("RSS load GB", "rss_load_gb", "{:.2f}"), ("peak RSS GB", "peak_rss_gb", "{:.2f}")]  # fmt: skip
    print(f"{'model':<10} {'config':<16}" + "".join(f"{c[0]:>13}" for c in cols))
    for (model, config), r in timings.items():
        print(f"{model:<10} {config:<16}" + "".join(f"{fmt.format(r[key]):>13}" for _, key, fmt in cols))
    print(f"\ntargets: {TARGETS}")
    t = timings
    if ("vary-tiny", "int8") in t and ("vary-tiny", "fp32") in t:
        ratio = t["vary-tiny", "int8"]["decode_tok_s"] / t["vary-tiny", "fp32"]["decode_tok_s"]
        print(f"  vary-tiny int8 decode / fp32 decode: {ratio:.2f}x")
    for best in ("int8", "int8-bf16vision", "int8-released"):
        if ("got-ocr2", best) not in t:
            continue
        g = t["got-ocr2", best]
        print(f"  got-ocr2 {best}: {g['decode_tok_s']:.1f} tok/s, peak RSS {g['peak_rss_gb']:.2f} GB")
        for other in ("fp32", "hf-fp32", "hf-int8"):
            if ("got-ocr2", other) in t:
                o = t["got-ocr2", other]
                print(f"  got-ocr2 {best} decode vs {other}: {g['decode_tok_s'] / o['decode_tok_s']:.2f}x")
        if ("got-ocr2", "hf-fp32") in t:
            h = t["got-ocr2", "hf-fp32"]
            print(f"  {g['new_tokens']}-token page, end to end: ours {best} {g['page_s']:.1f} s, transformers GOT fp32 "
                  f"{h['page_s']:.1f} s ({h['page_s'] / g['page_s']:.2f}x)")  # fmt: skip
    if quality:
        print(f"\n{'quality vs float32':<36}{'variant':>16}{'tf top-1':>10}{'greedy same':>13}{'1st diff':>10}"
              f"{'max|dlogit|':>13}{'mean|dlogit|':>14}{'logit std':>11}")  # fmt: skip
        for source, variants in quality.items():
            if "skipped" in variants:
                print(f"{source:<36} skipped: {variants['skipped'][-110:]}")
                continue
            for variant, q in variants.items():
                print(f"{source:<36}{variant:>16}{q['tf_top1']:>10.3f}{q['greedy_same']:>13.3f}{q['first_diff']:>10}"
                      f"{q['max_drift']:>13.4f}{q['mean_drift']:>14.5f}{q['logit_std']:>11.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
