"""Worked solutions to the exercises of nbs/03_rmsnorm.ipynb."""
import torch


def rmsnorm(x, weight, eps):
    "Upcast, divide by the root mean square, cast back to x's dtype, then scale (Llama's order)."
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def layer_norm(x, weight, bias, eps):
    "Center, divide by the standard deviation (biased variance), scale and shift."
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return weight * (x - mu) / torch.sqrt(var + eps) + bias
