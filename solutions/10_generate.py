"""Worked solutions to the exercises of nbs/10_generate.ipynb."""
import torch


def top_p(probs, p):
    "Sort, keep tokens while the probability of the more likely ones is below p, renormalize."
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(before >= p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(-1, keepdim=True)


@torch.no_grad()
def greedy(model, prompt, n):
    "Run the prompt once into a KV cache, then feed each argmax token at its position."
    cache = model.new_cache(prompt.shape[0])
    logits = model(prompt, cache=cache)[:, -1]
    out = prompt
    for i in range(n):
        nxt = logits.argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], dim=1)
        if i < n - 1:
            logits = model(nxt, cache=cache, start_pos=out.shape[1] - 1)[:, -1]
    return out
