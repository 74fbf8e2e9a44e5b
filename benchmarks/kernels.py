#!/usr/bin/env python
"""Benchmark minillm's Triton kernels against eager PyTorch and torch.compile at TinyLlama-1.1B's training shapes.

Per kernel: median forward+backward time and peak memory above the inputs, for eager PyTorch, torch.compile of the
eager code, and the Triton kernels; then the attention backends; then (with --model-layers N > 0) whole training
steps of a TinyLlama-width model with N layers for every kernels/compile combination.

    python benchmarks/kernels.py --out kernels.json            # on a CUDA machine: prints a table, writes JSON
    python benchmarks/kernels.py --smoke --out smoke.json      # tiny shapes on the CPU (Triton's interpreter)

Needs only torch (and triton on the GPU): run it from the repository root, or with PYTHONPATH pointing there.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

# Triton's interpreter must be chosen before triton is imported (the kernels import it)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minillm.config import LlamaConfig  # noqa: E402
from minillm.kernels.attention import bench_attention  # noqa: E402
from minillm.kernels.cross_entropy import (cross_entropy, cross_entropy_torch, linear_cross_entropy,  # noqa: E402
                                           linear_cross_entropy_torch)
from minillm.kernels.rmsnorm import HAS_TRITON, bench_fwd_bwd, print_rows, rms_norm, rms_norm_torch  # noqa: E402
from minillm.kernels.rope import apply_rope, apply_rope_torch  # noqa: E402
from minillm.kernels.swiglu import swiglu, swiglu_torch  # noqa: E402
from minillm.kernels.switch import bench_train_step  # noqa: E402

# the course's targets for the Triton kernels against eager PyTorch (forward + backward, TinyLlama shapes)
GOALS = {
    "rmsnorm": {"speedup": 1.7},
    "rope_q": {"speedup": 3.0},
    "swiglu": {"memory": 1.25},
    "cross_entropy": {"speedup": 2.9, "memory": 5.0},
}

TINYLLAMA = dict(batch=8, seq=2048, dim=2048, ffn=5632, vocab=32000, n_heads=32, n_kv_heads=4, head_dim=64)
SMOKE = dict(batch=2, seq=16, dim=64, ffn=176, vocab=512, n_heads=4, n_kv_heads=2, head_dim=16)


def angles(T: int, head_dim: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    "float32 RoPE tables (T, head_dim/2), theta 10000."
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    a = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return a.cos().to(device), a.sin().to(device)


def variants(eager, triton_fn, compile_: bool) -> list[tuple[str, object]]:
    "(name, function) pairs to compare: eager first (the baseline), then torch.compile of it, then Triton."
    out = [("eager", eager)]
    if compile_:
        out.append(("torch.compile", torch.compile(eager)))
    out.append(("triton", triton_fn))
    return out


def run_kernel(name: str, fns: list, make_inputs, bench_kw: dict) -> list[dict]:
    "Benchmark each (label, fn) on fresh inputs; a variant that fails is recorded, not fatal."
    rows = []
    for label, fn in fns:
        inputs = make_inputs()
        try:
            rows.append(bench_fwd_bwd(label, fn, inputs, **bench_kw))
        except Exception as e:  # e.g. torch.compile missing a compiler on this machine
            rows.append(dict(name=label, ms=float("nan"), peak_mib=None, error=f"{type(e).__name__}: {str(e)[:300]}"))
        del inputs
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    ok = [r for r in rows if r["ms"] == r["ms"]]
    if ok:
        print_rows(ok, f"\n== {name}")
    for r in rows:
        if "error" in r:
            print(f"   {r['name']}: failed: {r['error']}")
    return rows


def check_goals(results: dict) -> dict:
    "Triton against eager for each kernel with a goal: measured ratios and whether they meet it."
    verdicts = {}
    for kernel, goal in GOALS.items():
        rows = {r["name"]: r for r in results.get(kernel, [])}
        if "eager" not in rows or "triton" not in rows or rows["triton"]["ms"] != rows["triton"]["ms"]:
            continue
        e, t = rows["eager"], rows["triton"]
        v = {"speedup": e["ms"] / t["ms"]}
        if e["peak_mib"] and t["peak_mib"]:
            v["memory"] = e["peak_mib"] / t["peak_mib"]
        v["goal"] = goal
        v["met"] = all(k in v and v[k] >= target for k, target in goal.items())
        verdicts[kernel] = v
    return verdicts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 1 iteration: check the script runs (CPU ok)")
    ap.add_argument("--only", help="comma-separated subset: rmsnorm,rope,swiglu,cross_entropy,linear_cross_entropy,attention,model")
    ap.add_argument("--iters", type=int, default=20, help="timed repeats per variant (median reported)")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variants")
    ap.add_argument("--model-layers", type=int, default=4, help="layers of the TinyLlama-width training-step benchmark (0: skip)")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        ap.error("no CUDA GPU here: the benchmark needs one (use --smoke to check that the script runs)")
    if not HAS_TRITON:
        print("note: triton is not installed, so the 'triton' rows run the PyTorch fallback")
    device = "cuda" if cuda else "cpu"
    s = SMOKE if args.smoke else TINYLLAMA
    dtype = torch.bfloat16 if cuda else torch.float32
    compile_ = not args.no_compile and not (args.smoke and not cuda)  # CPU compile needs a C++ toolchain and minutes
    bench_kw = dict(warmup=1, iters=1) if args.smoke else dict(iters=args.iters)
    only = set(args.only.split(",")) if args.only else None
    N = s["batch"] * s["seq"]

    def rand(*shape, scale=1.0, grad=True, dt=dtype):
        t = torch.randn(*shape, device=device, dtype=torch.float32) * scale
        return t.to(dt).requires_grad_(grad)

    meta = dict(device=torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
                torch=torch.__version__, triton=_triton_version(), python=platform.python_version(),
                dtype=str(dtype), shapes=s, smoke=args.smoke, iters=bench_kw["iters"],
                memory="peak allocated during one forward+backward minus allocated before it (inputs, upstream grad)")
    print(f"{meta['device']} | torch {meta['torch']} | triton {meta['triton']} | {dtype} | tokens {N}")
    results = {}

    if not only or "rmsnorm" in only:
        results["rmsnorm"] = run_kernel(f"RMSNorm ({N} × {s['dim']})", variants(rms_norm_torch, rms_norm, compile_),
                                        lambda: (rand(N, s["dim"]), rand(s["dim"])), bench_kw)
    if not only or "rope" in only:
        cos, sin = angles(s["seq"], s["head_dim"], device)
        for key, heads in (("rope_q", s["n_heads"]), ("rope_k", s["n_kv_heads"])):
            results[key] = run_kernel(f"RoPE on {'queries' if key == 'rope_q' else 'keys'} "
                                      f"({s['batch']} × {s['seq']} × {heads} × {s['head_dim']})",
                                      variants(apply_rope_torch, apply_rope, compile_),
                                      lambda: (rand(s["batch"], s["seq"], heads, s["head_dim"]), cos, sin), bench_kw)
    if not only or "swiglu" in only:
        results["swiglu"] = run_kernel(f"SwiGLU ({N} × {s['ffn']})", variants(swiglu_torch, swiglu, compile_),
                                       lambda: (rand(N, s["ffn"]), rand(N, s["ffn"])), bench_kw)
    targets = torch.randint(0, s["vocab"], (N,), device=device)
    targets[:: 97] = -100  # a few padded positions, as in real batches
    if not only or "cross_entropy" in only:
        results["cross_entropy"] = run_kernel(f"cross-entropy ({N} × {s['vocab']} logits)",
                                              variants(cross_entropy_torch, cross_entropy, compile_),
                                              lambda: (rand(N, s["vocab"]), targets), bench_kw)
    if not only or "linear_cross_entropy" in only:
        fns = [("eager", linear_cross_entropy_torch)]
        if compile_:
            fns.append(("torch.compile", torch.compile(linear_cross_entropy_torch)))
        fns += [("head + triton CE", lambda h, w, t: cross_entropy(h @ w.T, t)), ("triton", linear_cross_entropy)]
        results["linear_cross_entropy"] = run_kernel(
            f"output head + loss ({N} × {s['dim']} → {s['vocab']})", fns,
            lambda: (rand(N, s["dim"]), rand(s["vocab"], s["dim"], scale=0.02), targets), bench_kw)
    if not only or "attention" in only:
        rows = bench_attention(s["batch"], s["seq"], s["n_heads"], s["n_kv_heads"], s["head_dim"], dtype, device,
                               iters=bench_kw["iters"])
        results["attention"] = rows
        ran = sorted([r for r in rows if r["ms"] == r["ms"]], key=lambda r: r["name"] != "sdpa math")
        if ran:
            print_rows(ran, f"\n== causal attention ({s['batch']} × {s['seq']}, {s['n_heads']}/{s['n_kv_heads']} heads "
                            f"of {s['head_dim']}; baseline: sdpa math)")
        for r in rows:
            print(f"   {r['name']:16} {r['note']}")
    if (not only or "model" in only) and args.model_layers > 0:
        if args.smoke:
            cfg = LlamaConfig.from_name("debug", n_layers=min(args.model_layers, 2))
        else:
            cfg = LlamaConfig.from_name("tinyllama-1.1b", n_layers=args.model_layers)
        flops = cfg.flops_per_token(s["seq"])
        peak = 989e12 if cuda and "H100" in meta["device"] else 312e12 if cuda and "A100" in meta["device"] else None
        print(f"\n== training step: {cfg.name} width, {cfg.n_layers} layers, {s['batch']} × {s['seq']} tokens "
              f"(MFU: 6N + 12·L·d·T = {flops / 1e9:.3f} GFLOP/token" + (f", peak {peak / 1e12:.0f} TFLOP/s)" if peak else ")"))
        rows = []
        combos = [("torch", False, None), ("triton", False, None)]
        if cuda:  # cuDNN's attention is the fastest SDPA backend on Hopper (see the attention rows)
            combos.append(("triton", False, "cudnn,flash"))
        if compile_:
            combos += [("torch", True, None), ("triton", True, None)]
        for kernels, comp, attention in combos:
            try:
                r = bench_train_step(cfg, kernels, comp, batch_size=s["batch"], seq_len=s["seq"], dtype=dtype,
                                     device=device, warmup=1 if args.smoke else 3, iters=1 if args.smoke else 10,
                                     attention=attention)
                r["mfu"] = r["tokens_per_s"] * flops / peak if peak else None
                mfu = f"MFU {r['mfu']:6.1%}" if r["mfu"] else ""
                mem = f"peak {r['peak_mib'] / 1024:6.2f} GiB" if r["peak_mib"] else ""
                print(f"{r['name']:34} {r['ms']:9.2f} ms/step {r['tokens_per_s']:11.0f} tok/s  {mfu}  {mem}")
            except Exception as e:
                r = dict(name=f"{kernels}{' + compile' if comp else ''}{f' + {attention}' if attention else ''}", ms=float("nan"),
                         error=f"{type(e).__name__}: {str(e)[:300]}")
                print(f"{r['name']:34} failed: {r['error']}")
            rows.append(r)
            if cuda:
                torch.cuda.empty_cache()
        results["model"] = rows

    verdicts = check_goals(results)
    if verdicts:
        print("\n== goals (Triton against eager)")
        for k, v in verdicts.items():
            got = ", ".join(f"{m} {v[m]:.2f}x (goal ≥ {g}x)" for m, g in v["goal"].items() if m in v)
            print(f"{k:16} {'met ' if v['met'] else 'MISS'}  {got}")
        if args.smoke:
            print("(smoke run: tiny shapes on a CPU, so these ratios mean nothing)")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, suffix=".tmp") as f:
            json.dump(dict(meta=meta, results=results, goals=verdicts), f, indent=1, default=str)
        os.replace(f.name, out)  # never a half-written file
        print(f"\nwrote {out}")
    return 0


def _triton_version() -> str | None:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())
