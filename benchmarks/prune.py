"""Pruning + distillation against training from scratch, at equal tokens (the Minitron comparison on the toy).

    PYTHONPATH=. python benchmarks/prune.py                      # trains the toy teacher first (800 steps)
    PYTHONPATH=. python benchmarks/prune.py --teacher runs/toy-teacher --steps 400

1. the teacher: `minillm train --preset toy --max-steps 800 --time-limit 0` (or --teacher DIR, trained that way);
2. `minillm prune --params 0.75` keeps about 75% of its parameters (embedding channels and MLP neurons), scored on
   128 windows of the teacher's training tokens;
3. recovery: `minillm train --init PRUNED --teacher TEACHER` for --steps steps of the toy recipe;
4. the same recovery with cross-entropy only (no teacher), and the pruned shape trained from a fresh initialization
   with the same recipe, seed and number of tokens.
Every run reads the teacher's tokenized training data (`--data TEACHER/data/tokens-*`). Every model is scored by `minillm eval --data data/heldout.txt` (bits per byte; lower is better). Writes
benchmarks/results/prune.json and prints the table. Runs one thread per process (--threads) with no time limit, so
the figures depend only on the steps, not on how busy the machine is.
"""
import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def minillm(*args, threads: int) -> None:
    "Run one `minillm` command (its statistics go to this script's standard error)."
    cmd = [sys.executable, "-m", "minillm", *map(str, args)]
    print("$ minillm " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    env = {**__import__("os").environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=sys.stderr)


def bpb(ckpt: Path, work: Path, threads: int) -> float:
    "Bits per byte of data/heldout.txt under the model at `ckpt`."
    out = work / f"eval-{ckpt.name}.json"
    minillm("eval", "--ckpt", ckpt, "--data", ROOT / "data/heldout.txt", "--json", out, threads=threads)
    return json.loads(out.read_text())["bpb"]


def fresh_init(pruned: Path, out: Path, seed: int) -> None:
    "The pruned model's shape and tokenizer with freshly initialized weights, as a Hugging Face directory."
    import torch

    from minillm.hf import load_hf, save_hf
    from minillm.model import Llama
    from minillm.tokenizer import Tokenizer

    cfg = load_hf(pruned).cfg
    torch.manual_seed(seed)
    save_hf(Llama(cfg), out, tokenizer=Tokenizer.load(pruned), overwrite=True)


def train(out: Path, steps: int, threads: int, *extra) -> None:
    if out.exists():
        shutil.rmtree(out)
    minillm("train", "--preset", "toy", "--out", out, "--max-steps", steps, "--time-limit", 0, "--threads", threads,
            "--eval-every", 0, "--no-progress", *extra, threads=threads)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=Path, help="a toy run trained with --max-steps 800 --time-limit 0 (default: "
                   "train it into WORK/teacher)")
    p.add_argument("--teacher-steps", type=int, default=800)
    p.add_argument("--work", type=Path, default=ROOT / "runs/prune-bench")
    p.add_argument("--params", type=float, default=0.75, help="share of the teacher's parameters the pruned model keeps")
    p.add_argument("--steps", type=int, default=400, help="training steps of each recovery / from-scratch run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/prune.json")
    args = p.parse_args()
    work, t0, T = args.work.resolve(), time.time(), args.threads
    work.mkdir(parents=True, exist_ok=True)
    teacher = args.teacher.resolve() if args.teacher else work / "teacher"
    if not args.teacher:
        train(teacher, args.teacher_steps, T)
    tokens_dir = sorted(teacher.glob("data/tokens-*"))  # the teacher's tokenized training data, read by every run
    if len(tokens_dir) != 1:
        raise SystemExit(f"{teacher} should be a toy run folder holding one data/tokens-* folder")
    data = ("--data", tokens_dir[0])
    pruned = work / "pruned"
    minillm("prune", "--ckpt", teacher, "--out", pruned, "--params", args.params, "--force", "--calibration-data",
            tokens_dir[0], threads=T)
    kept = json.loads((pruned / "prune.json").read_text())
    runs = {"recovered (distilled)": work / "recovered", "recovered (cross-entropy only)": work / "recovered-ce",
            "from scratch": work / "scratch"}
    seed = ("--seed", args.seed, *data)
    train(runs["recovered (distilled)"], args.steps, T, "--init", pruned, "--teacher", teacher, *seed)
    train(runs["recovered (cross-entropy only)"], args.steps, T, "--init", pruned, *seed)
    fresh_init(pruned, work / "scratch-init", args.seed)
    train(runs["from scratch"], args.steps, T, "--init", work / "scratch-init", *seed)
    tokens = args.steps * 16 * 128  # the toy recipe: 16 sequences of 128 tokens per step
    rows = [("teacher (unpruned)", teacher, kept["n_params"]["before"], args.teacher_steps * 16 * 128),
            ("pruned, before recovery", pruned, kept["n_params"]["after"], 0)]
    rows += [(name, run, kept["n_params"]["after"], tokens) for name, run in runs.items()]
    table = [dict(model=name, parameters=n, tokens=tok, bpb=round(bpb(path, work, T), 4)) for name, path, n, tok in rows]
    result = dict(command=" ".join(sys.argv), params=args.params, shape=kept["shape"], steps=args.steps,
                  threads=T, seconds=round(time.time() - t0), table=table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"| model | parameters | training tokens | heldout bpb |\n|---|---:|---:|---:|")
    for r in table:
        print(f"| {r['model']} | {r['parameters']:,} | {r['tokens']:,} | {r['bpb']:.4f} |")


if __name__ == "__main__":
    main()
