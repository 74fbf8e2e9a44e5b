"""Worked solutions to the exercises of nbs/11e_kernels_attention.ipynb."""
import math

import torch


def tiled_attention(q, k, v, block):
    "For each block of queries, stream the key/value blocks it may see, carrying max, denominator and output."
    T, d = q.shape
    out = torch.empty_like(q)
    for qs in range(0, T, block):
        qb = q[qs:qs + block]
        m = torch.full((qb.shape[0],), float("-inf"))
        l = torch.zeros(qb.shape[0])
        acc = torch.zeros(qb.shape[0], d)
        for ks in range(0, min(qs + block, T), block):
            s = qb @ k[ks:ks + block].T / math.sqrt(d)
            q_pos = torch.arange(qs, qs + s.shape[0])[:, None]
            k_pos = torch.arange(ks, ks + s.shape[1])[None, :]
            s = s.masked_fill(k_pos > q_pos, float("-inf"))
            m_new = torch.maximum(m, s.max(-1).values)
            p = torch.exp(s - m_new[:, None])
            rescale = torch.exp(m - m_new)
            l = l * rescale + p.sum(-1)
            acc = acc * rescale[:, None] + p @ v[ks:ks + block]
            m = m_new
        out[qs:qs + block] = acc / l[:, None]
    return out
