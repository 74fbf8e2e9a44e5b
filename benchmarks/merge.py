"""Merging and averaging the toy model's weights, measured in bits per byte on data/heldout.txt (text none of the
models trained on; its prose and code parts scored separately and summed).

1. The straight line between two fine-tunes of one base (`minillm train --init BASE` on the built-in corpus's code,
   and on its prose, different seeds) and between two models trained from scratch with different seeds: bpb at
   (1 − α)·A + α·B for α = 0, 0.1, …, 1. One basin (no barrier) for the fine-tunes; a barrier for the seeds.
   Beside them: SLERP at t = ½ and task arithmetic (base + both task vectors) for the fine-tunes.
2. At equal steps, the second seed's raw weights against their moving average (`--ema`) and the average of its last
   checkpoints (`--keep-checkpoints`, `minillm merge --last K`).

Every run is an ordinary `minillm train` command (printed), single-threaded, with fixed steps and no time limit, so
the figures reproduce on any machine; a run folder that already holds its final checkpoint is reused. The base is the
toy preset trained for 800 steps (`--base DIR` reuses one trained by that same command). Writes
benchmarks/results/merge.json and benchmarks/results/merge.png (the chapter draws the same picture from the JSON).

    python benchmarks/merge.py [--runs runs/merge-bench] [--base DIR] [--threads 1]
"""
import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minillm.checkpoint import Checkpoint, load_weights  # noqa: E402
from minillm.evaluate import heldout_texts, text_nll  # noqa: E402
from minillm.merge import linear_merge, slerp_merge, task_arithmetic  # noqa: E402

ALPHAS = [i / 10 for i in range(11)]


def train(out: Path, steps: int, threads: int, *extra: str) -> list[str]:
    "Run `minillm train` into `out` unless it already holds its checkpoint at `steps`; the command, as a list."
    cmd = [sys.executable, "-m", "minillm", "train", "--preset", "toy", "--out", str(out), "--max-steps", str(steps),
           "--time-limit", "0", "--threads", str(threads), "--no-progress", *extra]
    try:
        done = Checkpoint(out).step == steps
    except (FileNotFoundError, ValueError):
        done = False
    shown = ["minillm", *(os.path.relpath(a, ROOT) if os.path.isabs(a) else a for a in cmd[3:])]  # from the repo
    print(("reusing " if done else "") + " ".join(shown), file=sys.stderr, flush=True)
    if not done:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        subprocess.run(cmd + (["--overwrite"] if (out / "checkpoints").exists() else []), check=True, env=env)
    return shown


class Scorer:
    "bpb of the held-out text's prose and code parts (and of both together) for a state dict or a folder."

    def __init__(self, template, tokenizer):
        self.model, self.tok, self.texts = template, tokenizer, heldout_texts()

    def __call__(self, weights) -> dict:
        if not isinstance(weights, dict):
            weights = load_weights(weights)[0].state_dict()
        self.model.load_state_dict(weights)
        out, nats_all, bytes_all = {}, 0.0, 0
        for part, text in self.texts.items():
            nats = sum(n for n, _ in text_nll(self.model, self.tok, [text]))
            n_bytes = len(text.encode("utf-8"))
            out[part] = nats / n_bytes / torch.log(torch.tensor(2.0)).item()
            nats_all, bytes_all = nats_all + nats, bytes_all + n_bytes
        out["all"] = nats_all / bytes_all / torch.log(torch.tensor(2.0)).item()
        return {k: round(v, 5) for k, v in out.items()}


def line(score, a: dict, b: dict) -> list[dict]:
    "Scores along (1 − α)·a + α·b."
    return [score(linear_merge([a, b], [1 - alpha, alpha])) for alpha in ALPHAS]


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fts, seeds = results["fine_tunes"], results["seeds"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(ALPHAS, [s["all"] for s in fts["line"]], "o-", label="two fine-tunes of one base (code → prose)")
    left.plot(ALPHAS, [s["all"] for s in seeds["line"]], "s-", label="two runs from scratch (seed 0 → seed 1)")
    left.plot([0.5], [fts["slerp_half"]["all"]], "*", ms=12, color="C0", label="SLERP t = ½ of the fine-tunes")
    left.set(xlabel="α: weights (1 − α)·A + α·B", ylabel="bits per byte, data/heldout.txt",
             title="The straight line between two models")
    left.legend(fontsize=8)
    for part, style in (("prose", "o-"), ("code", "s-")):
        right.plot(ALPHAS, [s[part] for s in fts["line"]], style, label=f"{part} part of heldout.txt")
    right.axhline(fts["base"]["prose"], ls=":", color="C0", label="the base on prose")
    right.axhline(fts["base"]["code"], ls=":", color="C1", label="the base on code")
    right.set(xlabel="α (0: the code fine-tune, 1: the prose fine-tune)", ylabel="bits per byte",
              title="Between the two fine-tunes, by part")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "merge-bench", help="where the runs go")
    p.add_argument("--base", type=Path, help="a toy run trained with `minillm train --preset toy --max-steps 800 "
                   "--time-limit 0` to reuse (default: train it in RUNS/base)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--base-steps", type=int, default=800)
    p.add_argument("--ft-steps", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.99)
    p.add_argument("--keep", type=int, default=4, help="checkpoints the second seed keeps (every --save-every steps)")
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "merge.json")
    p.add_argument("--figure", type=Path, default=ROOT / "benchmarks" / "results" / "merge.png")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0, runs, commands = time.time(), args.runs, {}

    base = args.base or runs / "base"
    if args.base is None:
        commands["base"] = train(base, args.base_steps, args.threads)
    else:
        commands["base"] = ["minillm", "train", "--preset", "toy", "--out", os.path.relpath(base.resolve(), ROOT),
                            "--max-steps", str(args.base_steps), "--time-limit", "0"]
    commands["seed1"] = train(runs / "scratch-seed1", args.base_steps, args.threads, "--seed", "1", "--ema",
                              str(args.ema), "--keep-checkpoints", str(args.keep), "--save-every", str(args.save_every))
    ft = ["--init", str(base), "--lr", "5e-4", "--min-lr", "5e-5", "--warmup", "20", "--save-every", str(args.ft_steps)]
    commands["ft_code"] = train(runs / "ft-code", args.ft_steps, args.threads, *ft, "--seed", "1",
                                "--data", "builtin?kinds=code&max_bytes=3000000")
    commands["ft_prose"] = train(runs / "ft-prose", args.ft_steps, args.threads, *ft, "--seed", "2",
                                 "--data", "builtin?kinds=prose")

    template, tok, _ = load_weights(base)
    score = Scorer(template, tok)
    sd = {name: load_weights(path)[0].state_dict() for name, path in
          (("base", base), ("seed1", runs / "scratch-seed1"), ("code", runs / "ft-code"), ("prose", runs / "ft-prose"))}
    for name, path in (("seed1", runs / "scratch-seed1"), ("code", runs / "ft-code"), ("prose", runs / "ft-prose")):
        if load_weights(path)[1].fingerprint != tok.fingerprint:
            raise SystemExit(f"{path} has another tokenizer than the base {base}")
    fine_tunes = dict(base=score(sd["base"]), line=line(score, sd["code"], sd["prose"]),
                      slerp_half=score(slerp_merge(sd["code"], sd["prose"], 0.5)),
                      task_sum=score(task_arithmetic(sd["base"], [sd["code"], sd["prose"]], [1.0, 1.0])))
    seeds = dict(line=line(score, sd["base"], sd["seed1"]))

    run1 = runs / "scratch-seed1"
    last = sorted(p for p in (run1 / "checkpoints").glob("step-*") if (p / "state.json").is_file())
    final = last[-1]
    averaging = dict(steps=args.base_steps, ema_decay=args.ema, raw=score(final), ema=score(final / "ema"))
    for k in range(2, len(last) + 1):
        averaging[f"last_{k}"] = score(linear_merge([load_weights(p)[0].state_dict() for p in last[-k:]]))
        averaging[f"last_{k}_steps"] = [Checkpoint(p).step for p in last[-k:]]
    with open(run1 / "metrics.csv", newline="") as f:
        val = [r for r in csv.DictReader(f) if r.get("ema_val_bpb")][-1]  # the last evaluation
    averaging["val_split"] = dict(step=int(val["step"]), raw=float(val["val_bpb"]), ema=float(val["ema_val_bpb"]))

    results = dict(
        what="bits per byte on data/heldout.txt (prose and code parts scored separately; 'all' sums nats and bytes) "
             "of toy-preset models: along straight lines between weights, and raw vs moving average vs last-k "
             "checkpoint average at equal steps",
        alphas=ALPHAS, commands=commands, fine_tunes=fine_tunes, seeds=seeds, averaging=averaging,
        machine=dict(platform=platform.platform(), torch=torch.__version__, threads=args.threads,
                     note="CPU wall times on a shared 2-core machine are noisy"),
        wall_s=round(time.time() - t0, 1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.figure)
    f, s = fine_tunes["line"], seeds["line"]
    print(f"fine-tunes: α=0 {f[0]['all']:.4f}, α=½ {f[5]['all']:.4f}, α=1 {f[-1]['all']:.4f}; "
          f"seeds: α=0 {s[0]['all']:.4f}, α=½ {s[5]['all']:.4f}, α=1 {s[-1]['all']:.4f}")
    print(f"at step {args.base_steps}: raw {averaging['raw']['all']:.4f}, EMA {averaging['ema']['all']:.4f}, "
          + ", ".join(f"last {k} {averaging[f'last_{k}']['all']:.4f}" for k in range(2, len(last) + 1)))
    print(f"wrote {args.json} and {args.figure}")


if __name__ == "__main__":
    main()
