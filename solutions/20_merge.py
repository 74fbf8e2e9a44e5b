"""Worked solutions to the exercises of nbs/20_merge.ipynb."""
import torch


def slerp_tensor(v0, v1, t):
    "SLERP of the flattened tensors: sin((1−t)Ω)/sin Ω · v0 + sin(tΩ)/sin Ω · v1, the linear blend when nearly parallel."
    a, b = v0.double(), v1.double()
    cos = (a.flatten() @ b.flatten()) / (a.norm() * b.norm())
    if cos.abs() > 0.9995:
        return ((1 - t) * a + t * b).to(v0.dtype)
    omega = torch.arccos(cos)
    return ((torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)).to(v0.dtype)


def task_vector_merge(base, finetunes, lambdas):
    "The base plus each fine-tune's difference from it times its λ; tensors that are not floats stay the base's."
    return {k: v + sum(lam * (ft[k] - v) for lam, ft in zip(lambdas, finetunes)) if v.is_floating_point() else v
            for k, v in base.items()}


def ema_average(weights, decay):
    "avg ← decay·avg + (1 − decay)·w for each weight after the first, where the average starts."
    avg = weights[0].clone()
    for w in weights[1:]:
        avg = decay * avg + (1 - decay) * w
    return avg
