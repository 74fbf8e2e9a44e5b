"""Fused Triton kernels for the Llama blocks and the switch that installs them (chapters nbs/11a_kernels_rmsnorm.ipynb to nbs/11f_kernels_switch.ipynb).

This file is written by hand (nbdev only creates it empty). It re-exports the switch and the kernels whose names
differ from their modules' (`minillm.kernels.swiglu.swiglu` and `minillm.kernels.cross_entropy.cross_entropy` are
reached through their modules, which a same-named re-export here would hide).
"""
from .attention import flash_attn_available, sdpa_attend
from .cross_entropy import linear_cross_entropy
from .rmsnorm import HAS_TRITON, rms_norm, triton_ok
from .rope import apply_rope
from .switch import apply_kernels, compile_model, describe_kernels, kernels_in_use, resolve_kernels

__all__ = ["apply_kernels", "compile_model", "describe_kernels", "kernels_in_use", "resolve_kernels", "rms_norm",
           "apply_rope", "linear_cross_entropy", "sdpa_attend", "flash_attn_available", "triton_ok", "HAS_TRITON"]
