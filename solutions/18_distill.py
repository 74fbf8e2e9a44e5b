"""Worked solutions to the exercises of nbs/18_distill.ipynb."""
import torch
import torch.nn.functional as F


def temperature_softmax(logits, T):
    "softmax(logits / T): subtract each row's maximum before exp, which leaves the result unchanged and cannot overflow."
    z = logits / T
    e = (z - z.max(-1, keepdim=True).values).exp()
    return e / e.sum(-1, keepdim=True)


def distill_kl(student_logits, teacher_logits, T):
    "KL(teacher ‖ student) = Σ_v p_t (log p_t − log p_s) of the softened distributions, averaged over positions."
    V = student_logits.shape[-1]
    log_s = torch.log_softmax(student_logits.reshape(-1, V) / T, -1)
    log_t = torch.log_softmax(teacher_logits.reshape(-1, V) / T, -1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


def distill_loss(student_logits, teacher_logits, targets, alpha, T):
    "(1 − α)·CE + α·T²·KL on the positions whose target is not -100."
    V = student_logits.shape[-1]
    s, t, y = student_logits.reshape(-1, V), teacher_logits.reshape(-1, V), targets.reshape(-1)
    keep = y != -100
    return (1 - alpha) * F.cross_entropy(s[keep], y[keep]) + alpha * T**2 * distill_kl(s[keep], t[keep], T)
