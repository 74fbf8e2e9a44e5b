"""Worked solutions to the exercises of nbs/11b_kernels_rope.ipynb."""
import torch
import triton
import triton.language as tl


def rope_backward(dy, cos, sin):
    "A rotation's gradient is the rotation back: RoPE with the angles negated (sin → -sin)."
    half = dy.shape[-1] // 2
    d1, d2 = dy[..., :half].float(), dy[..., half:].float()
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat([d1 * cos + d2 * sin, d2 * cos - d1 * sin], dim=-1).to(dy.dtype)


@triton.jit
def _rope_token(x_ptr, cos_ptr, sin_ptr, y_ptr, seq_len, n_heads, HALF: tl.constexpr, BLOCK_HEADS: tl.constexpr,
                BLOCK_HALF: tl.constexpr):
    "One program per token: a (heads × pairs) tile of each half, rotated by the angles of the token's position."
    row = tl.program_id(0)  # the token b·T + t of a contiguous (B, T, H, D) tensor
    t = row % seq_len
    heads = tl.arange(0, BLOCK_HEADS)[:, None]
    j = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (heads < n_heads) & (j < HALF)
    offs = row * n_heads * 2 * HALF + heads * 2 * HALF + j
    x1 = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + offs + HALF, mask=mask, other=0.0).to(tl.float32)
    cos = tl.load(cos_ptr + t * HALF + j, mask=j < HALF, other=0.0)  # (1, pairs): the same for every head
    sin = tl.load(sin_ptr + t * HALF + j, mask=j < HALF, other=0.0)
    tl.store(y_ptr + offs, (x1 * cos - x2 * sin).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + offs + HALF, (x2 * cos + x1 * sin).to(y_ptr.dtype.element_ty), mask=mask)


def triton_rope(x, cos, sin):
    "Launch one program per token on a contiguous copy of x; the result has x's dtype."
    B, T, H, D = x.shape
    x = x.contiguous()
    y = torch.empty_like(x)
    _rope_token[(B * T,)](x, cos.float().contiguous(), sin.float().contiguous(), y, T, H, HALF=D // 2,
                          BLOCK_HEADS=triton.next_power_of_2(H), BLOCK_HALF=triton.next_power_of_2(D // 2))
    return y
