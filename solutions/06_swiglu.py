"""Worked solutions to the exercises of nbs/06_swiglu.ipynb."""
import math

import torch.nn.functional as F


def swiglu(x, w_gate, w_up, w_down):
    "w_down(silu(w_gate x) · w_up x), each weight stored (out, in) like nn.Linear's."
    return (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T


def llama_ffn_dim(dim, multiple_of, ffn_dim_multiplier):
    "2/3 of 4·dim, times the multiplier if any, rounded up to a multiple of `multiple_of`."
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)
