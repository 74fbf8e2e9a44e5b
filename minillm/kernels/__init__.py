"""Fused Triton kernels for the Llama blocks and the switch that installs them (chapters nbs/11_kernels_*.ipynb).

This file is written by hand (nbdev only creates it empty): it re-exports the public names of the kernel modules,
which are generated from the notebooks.
"""
from .attention import flash_attn_available, sdpa_attend
from .cross_entropy import cross_entropy, linear_cross_entropy
from .rmsnorm import HAS_TRITON, rms_norm, triton_ok
from .rope import apply_rope
from .swiglu import swiglu
from .switch import TritonRMSNorm, apply_kernels, compile_model, kernels_in_use, resolve_kernels

__all__ = ["apply_kernels", "compile_model", "kernels_in_use", "resolve_kernels", "TritonRMSNorm", "rms_norm",
           "apply_rope", "swiglu", "cross_entropy", "linear_cross_entropy", "sdpa_attend", "flash_attn_available",
           "triton_ok", "HAS_TRITON"]
