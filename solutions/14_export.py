"""Worked solutions to the exercises of nbs/14_export.ipynb."""
import re

import torch


def q8_0(w):
    "Blocks of 32: scale = max|w| / 127 (stored as float16), q = round(w / scale), halves away from zero."
    blocks = w.float().reshape(-1, 32)
    scale = blocks.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(scale == 0, torch.zeros_like(scale), 1 / scale)
    x = blocks * inv
    q = torch.sign(x) * torch.floor(x.abs() + 0.5)  # C's roundf, not round-half-to-even
    return scale.reshape(-1).half(), q.to(torch.int8)


TOP = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight", "output.weight": "output.weight"}
LAYER = {"attention_norm": "attn_norm", "attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v",
         "attention.wo": "attn_output", "ffn_norm": "ffn_norm", "feed_forward.w1": "ffn_gate",
         "feed_forward.w3": "ffn_up", "feed_forward.w2": "ffn_down"}


def gguf_name(name):
    "llama.cpp's names: token_embd, blk.N.attn_q, ..., output_norm, output."
    if name in TOP:
        return TOP[name]
    i, rest = re.fullmatch(r"layers\.(\d+)\.(.+)\.weight", name).groups()
    return f"blk.{i}.{LAYER[rest]}.weight"
