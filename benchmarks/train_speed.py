"""Training speed on the CPU: minillm's Llama against transformers' LlamaForCausalLM on the same shape, and the model
FLOP utilization against this machine's measured float32 matmul peak.

    PYTHONPATH=. python benchmarks/train_speed.py [--threads 2] [--compile] [--rounds 30] [--json out.json]

One training step = forward with the loss, backward, AdamW step; both models in float32, same batch and sequence
length, same initial weights. The models take turns, one step each (other work on the machine slows both alike); the
median step is reported, in wall time and in process CPU time. The matmul peak is the best of three measurements
(start, middle, end). FLOPs per token are counted as in the course (PaLM / torchtitan):
6·N + 12·L·d·T with N every parameter except the input embedding.
"""
import argparse
import json
import os
import statistics
import time

import torch


def matmul_peak(seconds: float = 2.0) -> float:
    "Best float32 matmul throughput (FLOP/s) over a few square sizes."
    best = 0.0
    for n in (256, 512, 1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(2):
            a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 4:
            a @ b
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def minillm_step(cfg):
    from minillm.model import Llama

    torch.manual_seed(0)
    model = Llama(cfg)
    return model, lambda m, x: m(x[:, :-1], targets=x[:, 1:])


def hf_step(cfg, minillm_model):
    "transformers' LlamaForCausalLM with the same weights (names mapped by hand: wq→q_proj, ...)."
    from transformers import LlamaConfig as HFConfig, LlamaForCausalLM

    hc = HFConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim,
                  num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
                  max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
                  tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, mlp_bias=False)
    hc._attn_implementation = "sdpa"
    model = LlamaForCausalLM(hc)
    top = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    layer = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
             "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
             "feed_forward.w2": "mlp.down_proj", "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    sd = {}
    for k, v in minillm_model.state_dict().items():
        if k.startswith("layers."):
            _, i, rest = k.split(".", 2)  # layers.3.attention.wq.weight → 3, attention.wq, weight
            name, leaf = rest.rsplit(".", 1)
            k = f"model.layers.{i}.{layer[name]}.{leaf}"
        else:
            k = top[k]
        sd[k] = v
    model.load_state_dict(sd, strict=True)  # same numbers: the comparison is of code, not of initializations
    return model, lambda m, x: m(input_ids=x[:, :-1], labels=x[:, :-1]).loss  # labels shift inside: T-1 predictions


def time_steps(model, step, x):
    "A function that runs one training step and returns its (wall, process CPU) seconds."
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for _ in range(3):  # warm up (and compile)
        step(model, x).backward(); opt.step(); opt.zero_grad(set_to_none=True)

    def run():
        w, c = time.perf_counter(), time.process_time()
        step(model, x).backward(); opt.step(); opt.zero_grad(set_to_none=True)
        return time.perf_counter() - w, time.process_time() - c

    return run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=30, help="steps per model, taken in turns")
    p.add_argument("--compile", action="store_true", help="also time minillm under torch.compile")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from minillm.config import LlamaConfig

    cfg = LlamaConfig(name="bench", vocab_size=1024, dim=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=352,
                      max_seq_len=args.seq_len)
    load_before = os.getloadavg()
    peak = matmul_peak()
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1), generator=torch.Generator().manual_seed(0))
    ours, our_step = minillm_step(cfg)
    theirs, their_step = hf_step(cfg, ours)
    with torch.no_grad():  # the same model: the same loss
        a, b = our_step(ours, x).item(), their_step(theirs, x).item()
    runners = {"minillm": time_steps(ours, our_step, x), "transformers": time_steps(theirs, their_step, x)}
    if args.compile:
        compiled, _ = minillm_step(cfg)
        runners["minillm (compiled)"] = time_steps(torch.compile(compiled), our_step, x)
    times = {k: [] for k in runners}
    peaks = [peak]
    for r in range(args.rounds):  # one step of each model in turn: both see the same load
        for k, run in runners.items():
            times[k].append(run())
        if r == args.rounds // 2:
            peaks.append(matmul_peak())
    peaks.append(matmul_peak())
    peak = max(peaks)  # other work only ever slows a measurement down
    tokens = args.batch * args.seq_len
    fpt = cfg.flops_per_token(args.seq_len)
    res = dict(threads=torch.get_num_threads(), batch=args.batch, seq_len=args.seq_len, torch=torch.__version__,
               matmul_peak_gflops=peak / 1e9, flops_per_token=fpt, load_before=load_before, load_after=os.getloadavg(),
               loss_minillm=a, loss_transformers=b, models={})
    print(f"{res['threads']} threads; load average before {load_before[0]:.2f}, after {res['load_after'][0]:.2f}")
    print(f"shape: dim 128, 4 layers, 4/2 heads, ffn 352, vocab 1024; batch {args.batch} × seq {args.seq_len}; "
          f"{fpt / 1e6:.2f} MFLOP/token (6N + 12·L·d·T, N without the input embedding)")
    print(f"initial loss: minillm {a:.4f}, transformers {b:.4f}")
    res["matmul_peak_gflops"], res["peaks_gflops"] = peak / 1e9, [p / 1e9 for p in peaks]
    base = statistics.median(w for w, _ in times["transformers"])
    base_cpu = statistics.median(c for _, c in times["transformers"])
    print(f"float32 matmul peak (best of {len(peaks)} measurements): {peak / 1e9:.0f} GFLOP/s")
    for k, ts in times.items():
        med, cpu = statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts)
        tps = tokens / med
        mfu = tps * fpt / peak
        res["models"][k] = dict(step_s=med, cpu_s=cpu, tokens_per_s=tps, mfu=mfu, vs_transformers=base / med,
                                vs_transformers_cpu_time=base_cpu / cpu)
        print(f"{k:>20}: {tps:8,.0f} tokens/s  ({med * 1000:6.1f} ms/step, CPU {cpu * 1000:6.1f} ms)  MFU {mfu:6.1%}  "
              f"×{base / med:.2f} vs transformers (×{base_cpu / cpu:.2f} in CPU time)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
