"""Worked solutions to the exercises of nbs/11f_kernels_switch.ipynb."""
from minillm.attention import Attention
from minillm.mlp import FeedForward


def install_seams(model, rope, swiglu, loss_fn):
    "The seams are plain attributes: set them on every module that has one, and on the model."
    for m in model.modules():
        if isinstance(m, Attention):
            m.rope = rope
        elif isinstance(m, FeedForward):
            m.swiglu = swiglu
    model.loss_fn = loss_fn
