"""The toy recipe, searched: each variant of the `toy` preset trains from nothing under the same wall-clock budget
(5 minutes by default, data preparation included, as `minillm train` counts it), on 2 CPU threads, and is judged on
`data/heldout.txt`, a text no run trains on (bits per byte, `minillm.evaluate.text_bpb`).

    PYTHONPATH=. python benchmarks/toy_sweep.py [--budget 300] [--only base,lr-2e-3] [--json out.json]

One axis moves at a time from where the sweep started (`START`, the toy preset before it adopted the winner):
learning rate, width/depth at the same budget, vocabulary size, sequence length, batch. Then the best choices are
combined (`--only best` with `--best key=value,...`). Every run is a fresh process writing to `--runs/NAME`; a folder
kept from an earlier run keeps its tokenized data, which saves ~10 s of preparation (remove `--runs` for runs that all
start cold). The table (markdown) and a JSON of every run are written at the end. A run's wall time depends on what
else the machine is doing: the load average during each run is recorded beside it.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# the recipe the sweep started from (the toy preset before it): the variants are relative to it, so that the sweep
# means the same after the preset adopts its winner
START = dict(lr=4e-3, min_lr=4e-4)
# name: (model overrides, recipe overrides), each relative to the toy preset with START
VARIANTS = {
    "base": ({}, {}),
    "lr-2e-3": ({}, dict(lr=2e-3, min_lr=2e-4)),
    "lr-8e-3": ({}, dict(lr=8e-3, min_lr=8e-4)),
    "wide-192x3": (dict(dim=192, n_layers=3, n_heads=6, n_kv_heads=2, ffn_dim=512), {}),
    "deep-96x6": (dict(dim=96, n_layers=6, n_heads=3, n_kv_heads=1, ffn_dim=256), {}),
    "vocab-2048": (dict(vocab_size=2048), {}),
    "seq-256": (dict(max_seq_len=256), dict(global_batch=8, micro_batch=8)),  # the same tokens per step
    "batch-32": ({}, dict(global_batch=32, micro_batch=32)),
}


def run_one(name: str, model: dict, recipe: dict, budget: float, runs: Path, threads: int) -> dict:
    "Train one variant in this process and measure it on the held-out text."
    start = time.time()
    import torch

    from minillm.config import LlamaConfig, TrainConfig
    from minillm.evaluate import heldout_path, text_bpb
    from minillm.export import load_for_export
    from minillm.train import train_run

    torch.set_num_threads(threads)
    cfg = LlamaConfig.from_name("toy", **model)
    tcfg = TrainConfig.from_preset("toy", out_dir=str(runs / name), time_limit=budget, **{**START, **recipe})
    load0 = os.getloadavg()[0]
    res = train_run(cfg, tcfg, progress=False, verbose=False, start_time=start, overwrite=True)
    wall = time.time() - start
    rows = list(csv.DictReader((runs / name / "metrics.csv").open()))
    first = next(float(r["elapsed_s"]) for r in rows if r["step"] == "0")
    m, tok, _ = load_for_export(runs / name)
    held = text_bpb(m, tok, [heldout_path().read_text(encoding="utf-8")], batch_size=16)
    return dict(name=name, model=model, recipe=recipe, params=cfg.n_params, steps=res.step, tokens=res.tokens,
                val_bpb=res.val_bpb, heldout_bpb=held["bpb"], wall_s=round(wall, 1), budget_s=budget,
                used=round(wall / budget, 3), prep_s=round(first, 1), stopped_by=res.stopped_by,
                load_avg=round((load0 + os.getloadavg()[0]) / 2, 2))


def table(rows: list[dict]) -> str:
    "Markdown table of the runs, best held-out bpb first."
    out = ["| variant | params | steps | tokens | prep s | wall s (of budget) | val bpb | heldout bpb | load |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: r["heldout_bpb"]):
        out.append(f"| {r['name']} | {r['params']:,} | {r['steps']:,} | {r['tokens']:,} | {r['prep_s']:.0f} | "
                   f"{r['wall_s']:.0f} ({100 * r['used']:.0f}%) | {r['val_bpb']:.3f} | {r['heldout_bpb']:.3f} | "
                   f"{r['load_avg']:.1f} |")
    return "\n".join(out)


def parse_best(spec: str) -> tuple[dict, dict]:
    "`key=value,...` into (model, recipe) overrides, each key sent where it belongs."
    from minillm.config import LlamaConfig, TrainConfig
    model_keys = set(LlamaConfig.__dataclass_fields__)
    model, recipe = {}, {}
    for kv in filter(None, spec.split(",")):
        k, v = kv.split("=")
        if k not in model_keys and k not in TrainConfig.__dataclass_fields__:
            raise SystemExit(f"--best: unknown field '{k}'")
        (model if k in model_keys else recipe)[k] = float(v) if "." in v or "e" in v else int(v)
    return model, recipe


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=300.0, help="seconds per run, data preparation included")
    p.add_argument("--only", help="comma-separated variant names (default: all; 'best' needs --best)")
    p.add_argument("--best", default="", help="the combined variant: key=value,... (model or recipe fields)")
    p.add_argument("--runs", type=Path, default=Path("runs/sweep"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/toy_sweep.json"))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run this JSON spec in this process
    args = p.parse_args()
    if args.one:
        spec = json.loads(args.one)
        print(json.dumps(run_one(**spec, budget=args.budget, runs=args.runs, threads=args.threads)))
        return
    variants = dict(VARIANTS)
    if args.best:
        variants["best"] = parse_best(args.best)
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in variants]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; valid: {', '.join(variants)}")
    rows = json.loads(args.json.read_text())["runs"] if args.json.is_file() else []
    for name in names:
        model, recipe = variants[name]
        spec = json.dumps(dict(name=name, model=model, recipe=recipe))
        out = subprocess.run([sys.executable, __file__, "--one", spec, "--budget", str(args.budget), "--runs",
                              str(args.runs), "--threads", str(args.threads)], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows = [r for r in rows if r["name"] != name] + [row]
        print(f"{name}: {row['steps']} steps, heldout {row['heldout_bpb']:.4f} bpb, wall {row['wall_s']} s", flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(budget_s=args.budget, threads=args.threads, runs=rows), indent=1) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
