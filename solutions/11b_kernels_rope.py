"""Worked solutions to the exercises of nbs/11b_kernels_rope.ipynb."""
import torch


def rope_backward(dy, cos, sin):
    "A rotation's gradient is the rotation back: RoPE with the angles negated (sin → -sin)."
    half = dy.shape[-1] // 2
    d1, d2 = dy[..., :half].float(), dy[..., half:].float()
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat([d1 * cos + d2 * sin, d2 * cos - d1 * sin], dim=-1).to(dy.dtype)
