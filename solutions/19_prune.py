"""Worked solutions to the exercises of nbs/19_prune.ipynb."""
import torch
import torch.nn.functional as F

from minillm.config import LlamaConfig
from minillm.mlp import FeedForward


def neuron_importance(act):
    "Minitron's score per channel of activations (B, S, C): the mean of |act| over the sequence, L2 over the batch."
    return act.abs().mean(dim=1).norm(dim=0)


def layer_influence(x_in, x_out):
    "Block Influence: 1 − the cosine similarity of a block's input and output, averaged over every token."
    return 1 - F.cosine_similarity(x_in, x_out, dim=-1).mean().item()


def slice_ffn(ff, keep):
    "A SwiGLU block holding only the neurons `keep`: rows of w1 and w3, columns of w2."
    small = FeedForward(LlamaConfig.from_name("debug", dim=ff.w1.in_features, ffn_dim=len(keep)))
    with torch.no_grad():
        small.w1.weight.copy_(ff.w1.weight[keep])
        small.w3.weight.copy_(ff.w3.weight[keep])
        small.w2.weight.copy_(ff.w2.weight[:, keep])
    return small
