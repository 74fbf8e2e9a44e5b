"""Worked solutions to the exercises of nbs/09_train.ipynb."""
import math

import torch


def lr_at(step, lr, min_lr, warmup, max_steps):
    "Linear warmup (step 0 gets lr/warmup), half a cosine down to min_lr at max_steps, then min_lr."
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= max_steps:
        return min_lr
    progress = (step - warmup) / max(1, max_steps - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def adamw_step(w, g, m, v, t, lr, betas, eps, weight_decay):
    "Moments, bias correction, decoupled weight decay."
    m = betas[0] * m + (1 - betas[0]) * g
    v = betas[1] * v + (1 - betas[1]) * g * g
    m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
    w = w * (1 - lr * weight_decay) - lr * m_hat / (v_hat.sqrt() + eps)
    return w, m, v
