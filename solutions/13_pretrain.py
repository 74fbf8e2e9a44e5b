"""Worked solutions to the exercises of nbs/13_pretrain.ipynb."""


def mfu(tokens_per_s_per_gpu, cfg, seq_len, peak_tflops):
    "Model FLOP/s over peak FLOP/s, with 6·N + 12·L·d·T FLOPs per token (N without the input embedding)."
    d = cfg.dim
    kv = cfg.n_kv_heads * cfg.head_dim
    n = cfg.n_layers * (2 * d * d + 2 * d * kv + 3 * d * cfg.ffn_dim + 2 * d) + d + d * cfg.vocab_size
    flops_per_token = 6 * n + 12 * cfg.n_layers * d * seq_len
    return tokens_per_s_per_gpu * flops_per_token / (peak_tflops * 1e12)


def accum_steps(global_batch, micro_batch, world_size):
    "Each process's share of the global batch, cut into micro-batches of at most micro_batch sequences."
    if global_batch % world_size:
        raise ValueError(f"global_batch={global_batch} cannot be split evenly over world_size={world_size}")
    share = global_batch // world_size
    micro = max(m for m in range(1, min(micro_batch, share) + 1) if share % m == 0)
    return share // micro
