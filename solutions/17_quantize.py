"""Worked solutions to the exercises of nbs/17_quantize.ipynb."""
import math

import torch

from minillm.quantize import QuantizedWeight


def quantize_int8(w):
    "One scale per row: the row's largest magnitude maps to the edge of [-128, 127], i.e. divided by 127.5."
    scale = w.abs().amax(dim=1, keepdim=True) / 127.5
    return torch.round(w / scale).clamp(-128, 127).to(torch.int8), scale


def _group_scale(wg):
    "Symmetric 4-bit scale of each row of a group, stored in float16, and the reciprocal the rounding uses."
    scale = (wg.abs().amax(-1, keepdim=True) / 7.5).half()
    return scale, torch.where(scale == 0, 0.0, (1.0 / scale).float())  # round with the stored scale


def quantize_int4(w, group_size):
    "Groups of `group_size` consecutive inputs, each with its own float16 scale; integers in [-8, 7]."
    g = w.float().view(w.shape[0], -1, group_size)
    scale, inv = _group_scale(g)
    q = torch.round(g * inv).clamp(-8, 7).to(torch.int8)
    return QuantizedWeight(q.view(w.shape), scale[..., 0], None, 4, group_size)


def gptq_quantize(w, H, group_size):
    """Round one column at a time; spread its error, divided by U[j, j], over the columns to its right along row j
    of U, the upper Cholesky factor of H⁻¹ (H damped by 1% of its mean diagonal). A group's scale comes from its
    weights as they stand when the group starts."""
    W, H = w.detach().clone().float(), H.detach().clone().float()
    rows, cols = W.shape
    dead = torch.diag(H) == 0  # inputs that were always zero
    H[dead, dead] = 1
    W[:, dead] = 0
    H += 0.01 * torch.diag(H).mean() * torch.eye(cols)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    q = torch.zeros(rows, cols, dtype=torch.int8)
    scales = torch.zeros(rows, math.ceil(cols / group_size), dtype=torch.float16)
    for j in range(cols):
        if j % group_size == 0:
            scale, inv = _group_scale(W[:, j:j + group_size])
            scales[:, j // group_size] = scale[:, 0]
        qj = torch.round(W[:, j:j + 1] * inv).clamp(-8, 7)
        q[:, j] = qj[:, 0].to(torch.int8)
        err = (W[:, j] - (qj * scale.float())[:, 0]) / U[j, j]
        W[:, j:] -= err[:, None] * U[j, j:][None, :]
    return QuantizedWeight(q, scales, None, 4, group_size)
