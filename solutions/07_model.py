"""Worked solutions to the exercises of nbs/07_model.ipynb."""
import torch.nn.functional as F


def lm_loss(h, weight, targets):
    "Logits h @ weight.T, upcast to float32, mean cross-entropy over the targets that are not -100."
    logits = (h @ weight.T).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def block_forward(block, x, cos, sin):
    "Pre-norm: each half normalizes its input and adds its result to the untouched residual stream."
    h = x + block.attention(block.attention_norm(x), cos, sin)
    return h + block.feed_forward(block.ffn_norm(h))
