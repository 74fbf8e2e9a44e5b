"""Distillation against plain training at equal cost in tokens: a student distilled from the toy model, and the same
student trained with cross-entropy alone, from the same initial weights, on the same batches in the same order
(same data, same seed, same number of steps), both scored on a text neither saw.

    PYTHONPATH=. python benchmarks/distill.py [--teacher RUN] [--out runs/bench-distill] [--steps 800]
        [--teacher-steps 800] [--mix 0.5:2 0.9:2 0.5:4] [--threads 1] [--json benchmarks/results/distill.json]

Everything runs through the command line a user types. Without `--teacher`, the teacher is the toy preset trained
for `--teacher-steps` (`minillm train --preset toy --max-steps N --time-limit 0`). The student is the toy's shape at
half its width and depth (`STUDENT`, about a quarter of its parameters, most of them in the embedding and output
head); its random initial weights are written once, with the teacher's tokenizer, to `OUT/student-init` (a Hugging
Face folder), and every student run starts from them with `minillm train --preset toy --init OUT/student-init`:
once with cross-entropy alone, once per `--mix` ALPHA:T with `--teacher RUN --distill-alpha ALPHA
--distill-temperature T`. `--time-limit 0` and a fixed `--max-steps` make the runs equal in steps and tokens, not in
seconds (a distilled step also runs the teacher forward).

Each model is then scored with `minillm eval --data data/heldout.txt` (a short story; the training text is Python's
standard library, so this is text none of them trained on), and the validation bits per byte of the training text
(its held-out split) is read from each run's `metrics.csv`. Runs that already exist in --out are reused.
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

ROOT = Path(__file__).resolve().parent.parent
STUDENT = dict(dim=64, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=176)  # the toy: 128, 4, 4, 2, 352


def minillm(*args: str, threads: int, log: Path) -> float:
    "Run `python -m minillm ARGS`, its output to `log`; returns the wall seconds. Fails loudly with the log's tail."
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=str(threads))
    t0 = time.time()
    with open(log, "w") as f:
        code = subprocess.call([sys.executable, "-m", "minillm", *args], stdout=f, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        sys.exit(f"minillm {' '.join(args)} failed ({code}):\n{log.read_text()[-3000:]}")
    return time.time() - t0


def trained(run: Path) -> bool:
    return (run / "checkpoints" / "latest").is_file()


def last_val_bpb(run: Path) -> float:
    "The last validation bits per byte in a run's metrics.csv (the held-out split of its training text)."
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("val_bpb")]
    return float(rows[-1]["val_bpb"])


def heldout_bpb(ckpt: Path, data: Path, out: Path, name: str, threads: int) -> float:
    "`minillm eval --data` of one model, its JSON kept as OUT/NAME.heldout.json (a given teacher's folder is left alone)."
    path = out / f"{name}.heldout.json"
    if not path.is_file():
        minillm("eval", "--ckpt", str(ckpt), "--data", str(data), "--json", str(path), threads=threads,
                log=out / f"{name}.eval.log")
    return json.loads(path.read_text())["bpb"]


def student_init(out: Path, teacher: Path, seed: int) -> Path:
    "The student's random initial weights with the teacher's tokenizer, as a Hugging Face folder (written once)."
    import torch

    from minillm.checkpoint import weights_tokenizer
    from minillm.config import LlamaConfig
    from minillm.hf import save_hf
    from minillm.model import Llama

    path = out / "student-init"
    if not (path / "config.json").is_file():
        torch.manual_seed(seed)
        save_hf(Llama(LlamaConfig.from_name("toy", **STUDENT)), path, tokenizer=weights_tokenizer(str(teacher)))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", help="a run folder to distil from (default: train the toy preset into OUT/teacher)")
    ap.add_argument("--out", default="runs/bench-distill")
    ap.add_argument("--steps", type=int, default=800, help="optimizer steps of every student run")
    ap.add_argument("--teacher-steps", type=int, default=800)
    ap.add_argument("--mix", nargs="+", default=["0.5:2"], help="ALPHA:T pairs to distil with")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--heldout", default=str(ROOT / "data" / "heldout.txt"))
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "distill.json"))
    args = ap.parse_args()
    out, heldout = Path(args.out), Path(args.heldout)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--time-limit", "0", "--threads", str(args.threads), "--seed", str(args.seed), "--no-progress"]

    teacher = Path(args.teacher) if args.teacher else out / "teacher"
    if not args.teacher and not trained(teacher):
        s = minillm("train", "--preset", "toy", "--out", str(teacher), "--max-steps", str(args.teacher_steps), *common,
                    threads=args.threads, log=out / "teacher.log")
        print(f"trained the teacher: {args.teacher_steps} steps in {s:.0f} s")
    init = student_init(out, teacher, args.seed)

    runs = [("cross-entropy only", "ce", [])]
    for mix in args.mix:
        alpha, temperature = mix.split(":")
        runs.append((f"distilled, alpha={alpha}, T={temperature}", f"distill-a{alpha}-t{temperature}",
                     ["--teacher", str(teacher), "--distill-alpha", alpha, "--distill-temperature", temperature]))
    rows = []
    for label, name, extra in runs:
        run = out / name
        timing = out / f"{name}.seconds"
        if not trained(run):
            seconds = minillm("train", "--preset", "toy", "--init", str(init), "--out", str(run), "--max-steps",
                              str(args.steps), *common, *extra, threads=args.threads, log=out / f"{name}.log")
            timing.write_text(f"{seconds:.1f}\n")
        seconds = float(timing.read_text()) if timing.is_file() else None
        rows.append(dict(model=label, run=name, steps=args.steps, train_seconds=seconds, val_bpb=last_val_bpb(run),
                         heldout_bpb=heldout_bpb(run, heldout, out, name, args.threads)))
        print(f"{label}: held-out {rows[-1]['heldout_bpb']:.4f} bits/byte", flush=True)
    teacher_row = dict(model="teacher (toy preset)", run=str(teacher), steps=None, train_seconds=None,
                       val_bpb=last_val_bpb(teacher),
                       heldout_bpb=heldout_bpb(teacher, heldout, out, "teacher", args.threads))

    from minillm.config import LlamaConfig
    n_student = LlamaConfig.from_name("toy", **STUDENT).n_params
    n_teacher = LlamaConfig.from_name("toy").n_params
    print(f"\nstudent {n_student:,} parameters ({STUDENT}), teacher {n_teacher:,}; {args.steps} steps each, seed "
          f"{args.seed}, same initial weights and batches\n")
    print(f"| model | val bpb (training text's held-out split) | bpb on {heldout.name} | train s |")
    print("|---|---|---|---|")
    for r in [teacher_row] + rows:
        secs = "" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        print(f"| {r['model']} | {r['val_bpb']:.4f} | {r['heldout_bpb']:.4f} | {secs} |")
    result = dict(student=dict(STUDENT, n_params=n_student), teacher=dict(run=str(teacher), n_params=n_teacher),
                  steps=args.steps, seed=args.seed, threads=args.threads, heldout=heldout.name,
                  teacher_result=teacher_row, students=rows, machine=platform.processor() or platform.machine(),
                  note="CPU wall seconds measured on a shared machine: noisy")
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
