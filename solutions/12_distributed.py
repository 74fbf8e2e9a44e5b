"""Worked solutions to the exercises of nbs/12_distributed.ipynb."""
import torch


def data_parallel_grads(model, x, y, world_size):
    "Each rank's gradient on its slice of the batch, then the all-reduce: the mean over ranks."
    per_rank = []
    for xs, ys in zip(x.chunk(world_size), y.chunk(world_size)):
        model.zero_grad()
        model(xs, ys).backward()
        per_rank.append([p.grad.clone() for p in model.parameters()])
    model.zero_grad()
    return [torch.stack(gs).mean(0) for gs in zip(*per_rank)]


def sharded_init(shape, seed, rank, world_size):
    "Draw the whole tensor from the seeded generator, as one process would, and keep this rank's chunk."
    gen = torch.Generator().manual_seed(seed)
    full = torch.randn(shape, generator=gen)
    chunks = full.chunk(world_size)
    return chunks[rank] if rank < len(chunks) else full[:0]
