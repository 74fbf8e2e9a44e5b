"""Worked solutions to the exercises of nbs/00_config.ipynb."""


def n_params(cfg):
    "Parameters of a Llama with config `cfg`, counted from the shapes (a tied head counted once)."
    d, kv = cfg.dim, cfg.n_kv_heads * cfg.head_dim
    attention = d * d + 2 * d * kv + d * d  # wq, wk, wv, wo
    mlp = 3 * d * cfg.ffn_dim  # w1, w3, w2
    block = attention + mlp + 2 * d  # and two RMSNorm gains
    head = 0 if cfg.tie_embeddings else d * cfg.vocab_size
    return cfg.vocab_size * d + cfg.n_layers * block + d + head


def flops_per_token(cfg, seq_len):
    "6·N + 12·L·d·T, N without the input embedding; the output head is a matmul and counts even when tied."
    n_matmul = n_params(cfg) - cfg.vocab_size * cfg.dim + (cfg.vocab_size * cfg.dim if cfg.tie_embeddings else 0)
    return 6 * n_matmul + 12 * cfg.n_layers * cfg.dim * seq_len
