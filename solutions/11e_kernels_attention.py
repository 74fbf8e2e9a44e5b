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


def attention_backward(q, k, v, out, lse, dout):
    """Recompute P = exp(S − lse) from q, k and the saved log-sum-exp; then dV = Pᵀ·dO, dP = dO·Vᵀ,
    dS = P ∘ (dP − D) with D = rowsum(dO ∘ O) (= rowsum(P ∘ dP)), dQ = dS·K / √d, dK = dSᵀ·Q / √d."""
    T, d = q.shape
    s = q @ k.T / math.sqrt(d)
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    p = torch.exp(s - lse[:, None])
    dv = p.T @ dout
    dp = dout @ v.T
    ds = p * (dp - (dout * out).sum(-1, keepdim=True))
    return ds @ k / math.sqrt(d), ds.T @ q / math.sqrt(d), dv
