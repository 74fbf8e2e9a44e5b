"""Worked solutions to the exercises of nbs/08_hf.ipynb."""
import json
import re
import struct

TOP = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
       "output.weight": "lm_head.weight"}
LAYER = {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
         "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
         "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
         "feed_forward.w2": "mlp.down_proj"}


def to_hf_name(name):
    "minillm's (Meta's) parameter names → transformers' names."
    if name in TOP:
        return TOP[name]
    i, rest = re.fullmatch(r"layers\.(\d+)\.(.+)\.weight", name).groups()
    return f"model.layers.{i}.{LAYER[rest]}.weight"


def safetensors_header(path):
    "8 bytes of little-endian u64 length, then that many bytes of JSON."
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))
