"""The toy model measured the evaluation chapter's way: bits per byte on data/heldout.txt (whole, prose, code) and
accuracy on data/stdlib_mc.jsonl (by kind of item, with 95% Wilson intervals and the chance rate).

    minillm train                                                        # the toy, about five minutes on 2 cores
    PYTHONPATH=. python benchmarks/eval_toy.py --ckpt runs/toy --json benchmarks/results/eval_toy.json

The same figures come from `minillm eval --ckpt runs/toy --data data/heldout.txt` and `--tasks stdlib_mc`.
"""
import argparse
import csv
import json
import time
from pathlib import Path

import torch

from minillm.evaluate import (choice_accuracy, choice_scores, data_path, heldout_path, heldout_texts, load_choices,
                              text_bpb, write_json)
from minillm.export import load_for_export


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default="runs/toy", help="run folder, checkpoint folder or Hugging Face directory")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, name = load_for_export(args.ckpt)
    out = dict(ckpt=str(args.ckpt), model=name, parameters=sum(p.numel() for p in model.parameters()))
    metrics = Path(args.ckpt) / "metrics.csv"
    if metrics.is_file():  # how long it trained
        rows = list(csv.DictReader(metrics.open()))
        out["steps"] = int(rows[-1]["step"])
        out["val_bpb"] = next(float(r["val_bpb"]) for r in reversed(rows) if r["val_bpb"])
    t = time.perf_counter()
    texts = heldout_texts()
    out["heldout"] = text_bpb(model, tok, [heldout_path().read_text(encoding="utf-8")], batch_size=16)
    for part, text in texts.items():
        out[f"heldout_{part}"] = text_bpb(model, tok, [text], batch_size=16)
    items = load_choices(data_path("stdlib_mc.jsonl"))
    scores = choice_scores(model, tok, items, batch_size=64)
    for kind in ("code", "docstring", "all"):
        ix = [i for i, it in enumerate(items) if kind == "all" or it["split_type"] == kind]
        out[f"stdlib_mc_{kind}"] = choice_accuracy([scores[i] for i in ix], [items[i] for i in ix])
    out["seconds"] = round(time.perf_counter() - t, 1)
    for key, r in out.items():
        if key.startswith("heldout"):
            print(f"{key:<18} {r['bpb']:.4f} bits/byte, {r['nats_per_token']:.4f} nats/token, {r['tokens']:,} tokens, "
                  f"{r['bytes']:,} bytes")
        elif key.startswith("stdlib_mc"):
            print(f"{key:<18} n={r['n']} acc {r['acc']:.3f} [{r['acc_ci'][0]:.3f}, {r['acc_ci'][1]:.3f}], acc_norm "
                  f"{r['acc_norm']:.3f} [{r['acc_norm_ci'][0]:.3f}, {r['acc_norm_ci'][1]:.3f}], chance {r['chance']:.2f}")
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    main()
