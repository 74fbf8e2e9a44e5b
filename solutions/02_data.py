"""Worked solutions to the exercises of nbs/02_data.ipynb."""
import numpy as np
import torch


def pack(docs, bos, eos):
    "Frame each document as [bos] + ids + [eos] (None leaves a marker out) and concatenate them."
    out = []
    for ids in docs:
        out += ([bos] if bos is not None else []) + list(ids) + ([eos] if eos is not None else [])
    return out


def xy(tokens, starts, seq_len):
    "Windows of seq_len + 1 tokens: x without the last token, y without the first (the next token of each x)."
    windows = torch.from_numpy(np.stack([np.asarray(tokens[s:s + seq_len + 1], dtype=np.int64) for s in starts]))
    return windows[:, :-1], windows[:, 1:]
