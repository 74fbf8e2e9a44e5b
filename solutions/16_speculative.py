"""Worked solutions to the exercises of nbs/16_speculative.ipynb."""
import torch


def expected_tokens_per_call(alpha, gamma):
    "1 + α + … + α^γ: a geometric sum, (1 − α^(γ+1)) / (1 − α), which is γ + 1 when every draft is accepted."
    return gamma + 1.0 if alpha == 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


def residual_distribution(p, q):
    "max(0, p − q), normalized; where it is all zero (p == q) there is nothing to correct, so p itself."
    r = (p - q).clamp(min=0)
    s = r.sum(-1, keepdim=True)
    return torch.where(s > 0, r / s.clamp(min=1e-30), p)


def accept_or_resample(p, q, drafts, generator=None):
    "Accept draft x with probability min(1, p(x) / q(x)); at the first rejection draw from the residual, else from p."
    for i, x in enumerate(drafts.tolist()):
        if float(torch.rand(1, generator=generator)) * q[i, x] >= p[i, x]:
            return i, int(torch.multinomial(residual_distribution(p[i], q[i]), 1, generator=generator))
    return len(drafts), int(torch.multinomial(p[len(drafts)], 1, generator=generator))
