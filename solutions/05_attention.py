"""Worked solutions to the exercises of nbs/05_attention.ipynb."""
import math

import torch


def causal_attention(q, k, v):
    "q (B, T, H, D), k and v (B, T, KV, D): repeat each key/value head for its group, mask the future, softmax."
    B, T, H, D = q.shape
    n_rep = H // k.shape[2]
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
    k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    weights = scores.masked_fill(future, float("-inf")).softmax(-1)
    return (weights @ v).transpose(1, 2)


def causal_mask(q_len, kv_len):
    "Query i sits at position kv_len - q_len + i and sees keys up to there."
    q_pos = torch.arange(kv_len - q_len, kv_len)[:, None]
    return torch.arange(kv_len)[None, :] <= q_pos
