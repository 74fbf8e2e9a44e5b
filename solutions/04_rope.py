"""Worked solutions to the exercises of nbs/04_rope.ipynb."""
import torch


def apply_rope(x, cos, sin):
    "Rotate channel i against channel i + head_dim/2 by the angles of each position, in float32."
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    cos, sin = cos[:, None, :], sin[:, None, :]  # (T, 1, head_dim/2): the same angles for every head
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def interleaved_to_half(w, n_heads):
    "Within each head, rows 0, 2, 4, ... first, then rows 1, 3, 5, ..."
    head_dim = w.shape[0] // n_heads
    heads = w.reshape(n_heads, head_dim, *w.shape[1:])
    return torch.cat([heads[:, 0::2], heads[:, 1::2]], dim=1).reshape(w.shape)
