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


def resolve_kernels(kernels, device, has_triton, interpret):
    "'auto' is a wish (Triton on CUDA when installed); an explicit 'triton' that cannot run is an error, not a fallback."
    if kernels not in ("auto", "torch", "triton"):
        raise ValueError(f"kernels={kernels!r} is not one of auto, torch, triton")
    if kernels == "auto":
        return "triton" if has_triton and device == "cuda" else "torch"
    if kernels == "triton" and not has_triton:
        raise ValueError("kernels='triton' needs the triton package")
    if kernels == "triton" and device != "cuda" and not (interpret and device == "cpu"):
        raise ValueError(f"kernels='triton' needs a CUDA GPU (or TRITON_INTERPRET=1 on the CPU), not {device}")
    return kernels
