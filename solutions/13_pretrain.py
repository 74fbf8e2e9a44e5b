"""Worked solutions to the exercises of nbs/13_pretrain.ipynb."""


def mfu(tokens_per_s_per_gpu, cfg, seq_len, peak_tflops):
    "Model FLOP/s over peak FLOP/s, with 6·N + 12·L·d·T FLOPs per token (N without the input embedding)."
    d = cfg.dim
    kv = cfg.n_kv_heads * cfg.head_dim
    n = cfg.n_layers * (2 * d * d + 2 * d * kv + 3 * d * cfg.ffn_dim + 2 * d) + d + d * cfg.vocab_size
    flops_per_token = 6 * n + 12 * cfg.n_layers * d * seq_len
    return tokens_per_s_per_gpu * flops_per_token / (peak_tflops * 1e12)


def accum_steps(global_batch, micro_batch, world_size):
    "Each of world_size processes runs global_batch / (micro_batch · world_size) micro-batches per step."
    if global_batch % (micro_batch * world_size):
        raise ValueError(f"global_batch={global_batch} is not a multiple of micro_batch × world_size = "
                         f"{micro_batch * world_size}")
    return global_batch // (micro_batch * world_size)
