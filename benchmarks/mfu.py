#!/usr/bin/env python
"""Training throughput and MFU of TinyLlama-1.1B on one GPU, up the speed ladder: eager → Triton kernels →
torch.compile → both → both under FSDP2's bf16 mixed precision. Writes the JSON that nbs/13_pretrain draws.

Each configuration trains on synthetic tokens (no dataset) at seq_len 2048 in bf16 with fused AdamW and the
largest micro-batch that fits without activation checkpointing, in its own process and under its own time
limit: `--warmup` micro-steps, then `--steps` timed micro-steps, an optimizer step every `--accum` of them.

    PYTHONPATH=. python benchmarks/mfu.py                                   # a CUDA GPU: writes benchmarks/results/mfu_<gpu>.json
    PYTHONPATH=. python benchmarks/mfu.py --configs eager,kernels+compile   # a few rungs only
    PYTHONPATH=. python benchmarks/mfu.py --smoke                           # the CPU, a tiny model: checks the script

MFU convention (PaLM / torchtitan): tokens/s × (6N + 12·L·d·T) / peak dense bf16 FLOP/s, N without the input
embedding; the peak comes from the GPU's name (A100 312, H100 SXM 989 TFLOP/s), or --peak-tflops.
Needs only torch (and triton for the kernels) besides this repository: no nbdev, no network.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LADDER = ("eager", "kernels", "compile", "kernels+compile", "kernels+compile+fsdp")
# on the CPU the Triton kernels run in Triton's interpreter, which torch.compile cannot trace: no kernels+compile
SMOKE_LADDER = ("eager", "kernels", "compile", "fsdp")
FEATURES = ("kernels", "compile", "fsdp")
MICRO_BATCHES = (1, 2, 3, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 64)


def parse_config(name: str) -> set[str]:
    "The features of a configuration name such as 'kernels+compile' ('eager' is none of them)."
    parts = set(name.split("+")) - {"eager"}
    unknown = parts - set(FEATURES)
    if unknown or not name:
        raise ValueError(f"unknown configuration {name!r}: join {', '.join(FEATURES)} with '+', or say 'eager'")
    return parts


# ---------------------------------------------------------------------------------------------- one configuration


def choose_attention(cfg, batch: int, seq_len: int, device, dtype) -> tuple[str, bool, float]:
    """The fastest SDPA backend for this model's causal attention, timed forward + backward: (backend, native GQA?,
    ms). Backends that cannot run these shapes (or GQA) are skipped; keys/values are repeated where needed."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from minillm.attention import repeat_kv

    q = torch.randn(batch, cfg.n_heads, seq_len, cfg.head_dim, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(batch, cfg.n_kv_heads, seq_len, cfg.head_dim, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    candidates = [("cudnn", "CUDNN_ATTENTION"), ("flash", "FLASH_ATTENTION"), ("efficient", "EFFICIENT_ATTENTION"),
                  ("math", "MATH")]
    best = None
    for name, attr in candidates:
        if not hasattr(SDPBackend, attr) or (name == "math" and best is not None):
            continue
        for gqa in (True, False):
            try:
                with sdpa_kernel([getattr(SDPBackend, attr)]):
                    def run():
                        kk, vv = (k, v) if gqa else (repeat_kv(k, cfg.n_rep), repeat_kv(v, cfg.n_rep))
                        out = F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa)
                        out.sum().backward()
                    run()
                    sync(device)
                    t = time.perf_counter()
                    for _ in range(3):
                        run()
                    sync(device)
                ms = (time.perf_counter() - t) / 3 * 1000
            except RuntimeError:
                continue
            if best is None or ms < best[2]:
                best = (name, gqa, ms)
    del q, k, v
    return best


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def set_attention(model, backend: str, gqa: bool) -> None:
    """Make every attention layer use one SDPA backend (global switches, which torch.compile also reads), repeating
    keys/values first when the backend has no native grouped-query attention."""
    import torch
    import torch.nn.functional as F

    from minillm.attention import Attention, attend, repeat_kv

    for name in ("flash", "mem_efficient", "math", "cudnn"):
        setter = getattr(torch.backends.cuda, f"enable_{name}_sdp", None)
        if setter is not None:
            setter(name == {"efficient": "mem_efficient"}.get(backend, backend))

    def attend_repeat(q, k, v, causal=True):
        n_rep = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), is_causal=causal)

    for m in model.modules():
        if isinstance(m, Attention):
            m.attend = attend if gqa else attend_repeat


def build(cfg, features: set[str], device, seed: int = 0):
    "TinyLlama with the chosen features, built the way the trainer builds it (meta device, replayed init)."
    import torch

    from minillm.distributed import DistEnv, build_model, init_distributed

    env = init_distributed(device) if "fsdp" in features else DistEnv(device=torch.device(device))
    prepare = None
    if "kernels" in features:
        from minillm.kernels.switch import apply_kernels

        def prepare(model):
            apply_kernels(model, "triton", device=device)
    model = build_model(cfg, env, parallel="fsdp" if "fsdp" in features else "none", ac="none",
                        precision="bf16", seed=seed, compile="compile" in features, prepare=prepare)
    return model, env


def measure(args) -> dict:
    "Run one configuration in this process and return its figures."
    import torch

    from minillm.config import LlamaConfig
    from minillm.distributed import autocast, clip_grad_norm, destroy_distributed
    from minillm.pretrain import MFU_CONVENTION, mfu, peak_tflops

    features = parse_config(args.one)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    cfg = LlamaConfig.from_name(args.preset, max_seq_len=args.seq_len) if args.seq_len else LlamaConfig.from_name(args.preset)
    T = cfg.max_seq_len
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model, env = build(cfg, features, device)
    attention = None
    if device.type == "cuda":
        backend, gqa, ms = choose_attention(cfg, 1, T, device, torch.bfloat16)
        set_attention(model, backend, gqa)
        attention = dict(backend=backend, native_gqa=gqa, ms_fwd_bwd_batch1=round(ms, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, betas=(0.9, 0.95), weight_decay=0.1, eps=1e-8,
                                  fused=device.type == "cuda")
    precision = "bf16" if device.type == "cuda" or args.smoke else "fp32"
    g = torch.Generator(device=device).manual_seed(0)

    def batch(b):
        seq = torch.randint(0, cfg.vocab_size, (b, T + 1), device=device, generator=g)
        return seq[:, :-1], seq[:, 1:]

    def micro_step(x, y, last: bool):
        with autocast(model, precision, env):
            loss = model(x, y)
        (loss / args.accum).backward()
        if last:
            clip_grad_norm(model, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def fits(b) -> bool:
        "One whole optimizer step at micro-batch b: does it fit in memory?"
        try:
            x, y = batch(b)
            micro_step(x, y, True)
            sync(device)
            return True
        except torch.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            return False
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    if args.micro_batch:
        micro = args.micro_batch
    else:  # the largest that fits, searched upwards from a guess and downwards on failure
        ok = [b for b in MICRO_BATCHES if b <= args.max_micro_batch]
        i = min(range(len(ok)), key=lambda j: abs(ok[j] - args.guess_micro_batch))
        if fits(ok[i]):
            while i + 1 < len(ok) and fits(ok[i + 1]):
                i += 1
        else:
            while i > 0 and not fits(ok[i - 1]):
                i -= 1
            i -= 1
            if i < 0:
                raise SystemExit(f"{args.one}: even micro-batch 1 does not fit")
        micro = ok[i]
    while True:  # the search can leave memory fragmented: step down if the warmup does not fit after all
        try:
            x, y = batch(micro)
            t_warm = time.perf_counter()
            for i in range(args.warmup):
                micro_step(x, y, (i + 1) % args.accum == 0)
            sync(device)
            break
        except torch.OutOfMemoryError:
            smaller = [b for b in MICRO_BATCHES if b < micro]
            if args.micro_batch or not smaller:
                raise
            micro = smaller[-1]
            x = y = None
            optimizer.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
    warmup_s = time.perf_counter() - t_warm
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    total = torch.zeros((), device=device)
    t0 = time.perf_counter()
    for i in range(args.steps):  # no host synchronization in here: the GPU runs ahead of Python
        total += micro_step(x, y, (i + 1) % args.accum == 0)
    sync(device)
    seconds = time.perf_counter() - t0
    tokens_per_s = args.steps * micro * T / seconds
    if args.peak_tflops or device.type == "cuda":
        peak, source = peak_tflops(override=args.peak_tflops)
    else:
        peak, source = None, "no GPU"

    fpt = cfg.flops_per_token(T)
    result = dict(name=args.one, features=sorted(features), micro_batch=micro, seq_len=T, accum=args.accum,
                  steps=args.steps, warmup=args.warmup, warmup_s=round(warmup_s, 2),
                  step_ms=round(1000 * seconds / args.steps, 2), tokens_per_s=round(tokens_per_s, 1),
                  mfu=None if peak is None else round(mfu(tokens_per_s, fpt, peak), 4),
                  peak_mem_gib=round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
                  mean_loss=round((total / args.steps).item(), 4), attention=attention,
                  convention=MFU_CONVENTION, flops_per_token=fpt, peak_tflops=peak, peak_source=source)
    if "fsdp" in features:
        destroy_distributed(env)
    return result


# ---------------------------------------------------------------------------------------------- the whole ladder


def run_one(name: str, args, micro_batch: int | None, timeout: float) -> dict:
    "One configuration in a fresh process (its own memory, compile caches and time limit)."
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", name, "--preset", args.preset,
           "--warmup", str(args.warmup), "--steps", str(args.steps), "--accum", str(args.accum),
           "--max-micro-batch", str(args.max_micro_batch), "--guess-micro-batch", str(args.guess_micro_batch)]
    for flag, value in (("--seq-len", args.seq_len), ("--micro-batch", micro_batch), ("--peak-tflops", args.peak_tflops)):
        if value:
            cmd += [flag, str(value)]
    if args.smoke:
        cmd.append("--smoke")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTORCH_CUDA_ALLOC_CONF=os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"))
    if "fsdp" in name:  # a one-process group for FSDP2
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    t = time.perf_counter()
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(name=name, error=f"did not finish within {timeout:.0f} s")
    lines = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
    if res.returncode != 0 or not lines:
        lines = (res.stderr or res.stdout).strip().splitlines()
        last = next((l.strip() for l in reversed(lines) if "Error" in l or "error" in l), lines[-1] if lines else "")
        return dict(name=name, error=f"exit code {res.returncode}: {last[:300]}")
    out = json.loads(lines[-1][len("RESULT "):])
    out["wall_s"] = round(time.perf_counter() - t, 1)
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_out(smoke: bool) -> Path:
    "benchmarks/results/mfu_<gpu>.json, e.g. mfu_h100.json."
    import torch

    if smoke or not torch.cuda.is_available():
        return ROOT / "benchmarks" / "results" / "mfu_smoke.json"
    from minillm.pretrain import peak_tflops

    _, label = peak_tflops()
    tag = label.split()[0].lower() if not label.startswith("unknown") else "gpu"
    return ROOT / "benchmarks" / "results" / f"mfu_{tag}.json"


def write_json(path: Path, data: dict) -> None:
    "Write atomically: a temporary file, then a rename."
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=None, help=f"comma-separated rungs (default: {','.join(LADDER)}; "
                                                   f"--smoke: {','.join(SMOKE_LADDER)})")
    p.add_argument("--preset", default=None, help="model preset (default: tinyllama-1.1b; --smoke: debug)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the preset's context)")
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per micro-step (default: the largest that fits)")
    p.add_argument("--max-micro-batch", type=int, default=64)
    p.add_argument("--guess-micro-batch", type=int, default=8, help="where the search for the largest micro-batch starts")
    p.add_argument("--warmup", type=int, default=10, help="untimed micro-steps (compilation happens here)")
    p.add_argument("--steps", type=int, default=20, help="timed micro-steps")
    p.add_argument("--accum", type=int, default=4, help="micro-steps per optimizer step")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s (default: from the GPU's name)")
    p.add_argument("--timeout", type=float, default=150, help="seconds allowed per configuration")
    p.add_argument("--budget", type=float, default=480, help="seconds for the whole ladder; later rungs are skipped")
    p.add_argument("--out", default=None, help="JSON to write (default: benchmarks/results/mfu_<gpu>.json)")
    p.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, a few steps: checks the script runs")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one configuration, print RESULT
    args = p.parse_args(argv)
    if args.smoke:
        args.preset = args.preset or "debug"
        args.seq_len = args.seq_len or 64
        args.micro_batch = args.micro_batch or 2
        args.warmup, args.steps, args.accum = min(args.warmup, 2), min(args.steps, 4), min(args.accum, 2)
        os.environ.setdefault("TRITON_INTERPRET", "1")  # the Triton kernels on the CPU, slowly
    args.preset = args.preset or "tinyllama-1.1b"
    for name in ("warmup", "steps", "accum"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")

    if args.one:
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return 0

    import torch

    from minillm.config import LlamaConfig
    from minillm.pretrain import MFU_CONVENTION

    configs = [c.strip() for c in (args.configs or ",".join(SMOKE_LADDER if args.smoke else LADDER)).split(",") if c.strip()]
    for c in configs:
        try:
            parse_config(c)
        except ValueError as e:
            p.error(str(e))
    cfg = LlamaConfig.from_name(args.preset)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else platform.processor() or "cpu"
    out = Path(args.out) if args.out else default_out(args.smoke)
    report = dict(device=device, torch=torch.__version__, preset=args.preset, n_params=cfg.n_params,
                  seq_len=args.seq_len or cfg.max_seq_len, convention=MFU_CONVENTION, smoke=args.smoke,
                  date=time.strftime("%Y-%m-%d"), results=[])
    print(f"{args.preset} on {device}, seq_len {report['seq_len']}, bf16 autocast, fused AdamW\n{MFU_CONVENTION}")
    print(f"{'configuration':<24}{'micro':>6}{'ms/step':>10}{'tokens/s':>12}{'MFU':>8}{'peak GiB':>10}  attention")
    start, found = time.perf_counter(), {}
    for name in configs:
        left = args.budget - (time.perf_counter() - start)
        if left < 20:
            report["results"].append(dict(name=name, error="skipped: the time budget was spent"))
            continue
        features = parse_config(name)
        # compiled rungs reuse the micro-batch found for the same kernels in eager mode (searching recompiles)
        base = "kernels" if "kernels" in features else "eager"
        micro = args.micro_batch or (found.get(base) if "compile" in features or "fsdp" in features else None)
        r = run_one(name, args, micro, min(args.timeout, left))
        if "error" not in r and not features - {"kernels"}:
            found[base] = r["micro_batch"]
        report["results"].append(r)
        if "error" in r:
            print(f"{name:<24}  failed: {r['error'][:300]}")
        else:
            att = r["attention"]["backend"] + ("" if r["attention"]["native_gqa"] else " (k/v repeated)") if r["attention"] else "-"
            m = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
            mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
            print(f"{name:<24}{r['micro_batch']:>6}{r['step_ms']:>10.1f}{r['tokens_per_s']:>12,.0f}{m:>8}{mem:>10}  {att}",
                  flush=True)
        write_json(out, report)  # after every rung: a later failure keeps what was measured
    print(f"wrote {out} ({time.perf_counter() - start:.0f} s)")
    return 0 if any("error" not in r for r in report["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
