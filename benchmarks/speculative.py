"""Speculative decoding on the CPU: a target at least 8× the draft's size, both trained on the same data with the same
tokenizer, generating greedily with and without the draft; the measured speedup next to the formula's prediction.

    PYTHONPATH=. python benchmarks/speculative.py --target runs/toy [--out runs/bench-spec] [--steps 300]
        [--gammas 1 2 3 4 6] [--tokens 120] [--threads 1] [--json out.json]

With `--target RUN` (a `minillm train` run of the toy preset), trains a one-layer draft (about 1/9 of the toy's
parameters) on the same data with the target's tokenizer; with `--tokenizer TOK` instead, also trains a deep narrow
target (the toy's width, 12 layers) first. Runs are made once; later calls reuse them from --out. On a CPU, small models are bound by per-operation overhead,
which grows with depth, not width: the target is made deep so that one of its forward passes costs many draft steps,
as a 7B target's does a 1.1B draft's on a GPU. Then, for each γ, it generates `--tokens` greedy tokens after each of
a few prompts, alternating target alone and target + draft (other work on the machine slows both alike), checks the
two texts are identical, and reports tokens/s (best of `--rounds` rounds), the acceptance rate α, tokens per target
call against (1 − α^(γ+1)) / (1 − α), and the speedup against the one predicted from α and the measured cost of a
draft step (c) and of a target call on γ + 1 tokens (v), in target steps: E / (γ·c + v).
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

PROMPTS = ["def ", "import os\n", "class ", "    def __init__(self", "# ", "for i in range(", "return ", "if __name__"]


def train_pair(out: Path, tokenizer: str, steps: int, target: str | None = None):
    "The target (unless given) and the draft, trained once on the toy preset's data; reused when their runs exist."
    from minillm.config import LlamaConfig
    from minillm.config import TrainConfig
    from minillm.train import train_run

    shapes = {"target": dict(dim=128, n_layers=12, n_heads=4, n_kv_heads=2, ffn_dim=352),
              "draft": dict(dim=64, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=176, tie_embeddings=True)}
    if target is not None:
        shapes.pop("target")
    for name, shape in shapes.items():
        run = out / name
        if (run / "checkpoints" / "latest").is_file():
            continue
        cfg = LlamaConfig.from_name("toy", **shape)
        tcfg = TrainConfig.from_preset("toy", out_dir=str(run), tokenizer=tokenizer, max_steps=steps, time_limit=None,
                                       warmup=min(60, steps // 10), eval_every=steps, save_every=steps, sample_tokens=0)
        torch.manual_seed(0)
        res = train_run(cfg, tcfg, progress=False, verbose=False)
        print(f"trained {name}: {cfg.n_params:,} parameters, {res.step} steps, val bpb {res.val_bpb:.3f}")


def cost(model, n_tokens: int, rounds: int = 50) -> float:
    "Median seconds of one cached forward pass on `n_tokens` new tokens after a 32-token context."
    cache = model.new_cache(1)
    with torch.no_grad():
        model(torch.ones(1, 32, dtype=torch.long), cache=cache, start_pos=0)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            model(torch.ones(1, n_tokens, dtype=torch.long), cache=cache, start_pos=32)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def measure(target, draft, tok, gamma: int, n_tokens: int, rounds: int) -> dict:
    from minillm.generate import generate
    from minillm.speculative import SpeculativeStats, expected_tokens_per_call, speculative_generate

    prompts = [tok.encode(p, bos=True) for p in PROMPTS]
    best_plain = best_spec = float("inf")
    for _ in range(rounds):
        stats = SpeculativeStats()
        t0 = time.perf_counter()
        plain = [generate(target, ids, n_tokens, temperature=0) for ids in prompts]
        t1 = time.perf_counter()
        spec = [speculative_generate(target, draft, ids, n_tokens, gamma, temperature=0, stats=stats) for ids in prompts]
        t2 = time.perf_counter()
        assert spec == plain, "speculative decoding changed the greedy text"
        best_plain, best_spec = min(best_plain, t1 - t0), min(best_spec, t2 - t1)
    new = n_tokens * len(prompts)
    c, v = cost(draft, 1) / cost(target, 1), cost(target, gamma + 1) / cost(target, 1)
    alpha = stats.alpha
    predicted_calls = expected_tokens_per_call(alpha, gamma)
    return dict(gamma=gamma, alpha=round(alpha, 4), acceptance_rate=round(stats.acceptance_rate, 4),
                tokens_per_call=round(stats.tokens_per_call, 3), formula_tokens_per_call=round(predicted_calls, 3),
                plain_tokens_per_s=round(new / best_plain, 1), speculative_tokens_per_s=round(new / best_spec, 1),
                speedup=round(best_plain / best_spec, 3), draft_step_cost=round(c, 3), verify_cost=round(v, 3),
                predicted_speedup=round(predicted_calls / (gamma * c + v), 3))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", help="a trained toy-preset run to use as the target (its tokenizer for the draft)")
    ap.add_argument("--tokenizer", help="without --target: the tokenizer both models use (a run or checkpoint folder, or a file)")
    ap.add_argument("--out", default="runs/bench-spec", help="folder for the two training runs")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--gammas", type=int, nargs="+", default=[1, 2, 3, 4, 6])
    ap.add_argument("--tokens", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="benchmarks/results/speculative_cpu.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    from minillm.checkpoint import find_checkpoint, load_model

    if (args.target is None) == (args.tokenizer is None):
        ap.error("give --target RUN or --tokenizer TOK")
    tokenizer = str(find_checkpoint(args.target)) if args.target else args.tokenizer
    train_pair(out, tokenizer, args.steps, args.target)
    target, tok, _ = load_model(args.target or out / "target")
    draft, _, _ = load_model(out / "draft")
    sizes = dict(target=target.num_params(), draft=draft.num_params())
    print(f"target {sizes['target']:,} parameters, draft {sizes['draft']:,} ({sizes['target'] / sizes['draft']:.1f}×), "
          f"{args.threads} thread(s), {len(PROMPTS)} prompts × {args.tokens} greedy tokens, best of {args.rounds}")
    rows = []
    for gamma in args.gammas:
        rows.append(measure(target, draft, tok, gamma, args.tokens, args.rounds))
        r = rows[-1]
        print(f"γ={gamma}: α {r['alpha']:.3f}, tokens/call {r['tokens_per_call']:.2f} (formula "
              f"{r['formula_tokens_per_call']:.2f}), {r['plain_tokens_per_s']:.0f} → {r['speculative_tokens_per_s']:.0f} "
              f"tokens/s: {r['speedup']:.2f}× (predicted {r['predicted_speedup']:.2f}× from c={r['draft_step_cost']:.2f}, "
              f"v={r['verify_cost']:.2f})", flush=True)
    result = dict(sizes=sizes, threads=args.threads, tokens=args.tokens, prompts=len(PROMPTS), rounds=args.rounds,
                  machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared with other work",
                  torch=torch.__version__, rows=rows)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
