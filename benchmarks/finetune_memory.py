"""Peak memory of one fine-tuning step: LoRA on a float32 base, LoRA on a bfloat16 base, QLoRA (the base's block
matrices in 4 bits, bfloat16 compute), and full fine-tuning in float32 for scale, on the same model.

    PYTHONPATH=. python benchmarks/finetune_memory.py [--preset tinyllama-1.1b] [--seq-len 256] [--batch 1]
                                                      [--methods lora-fp32,lora-bf16,qlora-bf16] [--json out.json]

Each configuration runs in a fresh process: the model is built from the preset with random weights (the memory does
not depend on their values), prepared by `minillm.finetune.prepare_model` (LoRA rank 8 on all seven block matrices,
alpha 16), and one `finetune_step` (forward, backward, AdamW step, on `--batch` sequences of `--seq-len` tokens, every
token a target) runs under `PeakBytes`, a `TorchDispatchMode` that counts the bytes of every tensor storage alive: the
model's weights (parameters and buffers, the packed 4-bit weights among them) when it starts, then every storage an
operation creates (activations, gradients, optimizer state, temporaries) until it is freed, and keeps the peak of the
total. (PyTorch's own `MemTracker` does the same with a breakdown by kind, but it cannot track a model whose
parameters are frozen.) On a CUDA device `torch.cuda.max_memory_allocated` over the same step is reported too. The process's peak resident size (`ru_maxrss`)
is also given; it includes building the float32 model before it is cast or quantized, so it is an upper bound on
this machine and not what a loader that quantizes as it reads would need.
"""
import argparse
import json
import resource
import subprocess
import sys
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

METHODS = {  # name: (FinetuneConfig.method, dtype)
    "lora-fp32": ("lora", "float32"), "lora-bf16": ("lora", "bfloat16"), "qlora-bf16": ("qlora", "bfloat16"),
    "qlora-fp32": ("qlora", "float32"), "full-fp32": ("full", "float32"),
}


class PeakBytes(TorchDispatchMode):
    """Live bytes of tensor storages: those of the `existing` tensors, plus every storage an operation creates while
    the mode is active, each until it is freed. `peak` is the largest total seen."""

    def __init__(self, existing):
        super().__init__()
        self._sizes, self._refs, self.live, self.peak = WeakIdKeyDictionary(), [], 0, 0
        for t in existing:
            self._track(t)
        self.start = self.live

    def _track(self, t) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        st = t.untyped_storage()
        if st in self._sizes:
            return
        n = self._sizes[st] = st.nbytes()
        self.live += n
        self._refs.append(weakref.ref(st, lambda _, n=n: self._free(n)))
        self.peak = max(self.peak, self.live)

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self._track(t)
        return out


def measure(preset: str, name: str, seq_len: int, batch: int, device: str) -> dict:
    "One configuration, in this process: peak bytes by kind over one fine-tuning step."
    from minillm.config import LlamaConfig
    from minillm.finetune import FinetuneConfig, finetune_step, prepare_model
    from minillm.model import Llama

    torch.manual_seed(0)
    cfg = LlamaConfig.from_name(preset)
    method, dtype = METHODS[name]
    fcfg = FinetuneConfig(method=method, dtype=dtype, lora_rank=8, lora_alpha=16, lora_dropout=0.0, device=device)
    model = Llama(cfg)
    params = prepare_model(model, fcfg, device)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1)).tolist()
    batch_examples = [(row[:-1], row[1:]) for row in ids]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    frozen = [t for t in list(model.parameters()) + list(model.buffers()) if not t.requires_grad]
    weights = {"frozen_bytes": sum(t.untyped_storage().nbytes() for t in {t.untyped_storage().data_ptr(): t for t in frozen}.values()),
               "trained_bytes": sum(p.numel() * p.element_size() for p in params)}
    start = time.time()
    with PeakBytes(list(model.parameters()) + list(model.buffers())) as tracker:
        loss, _ = finetune_step(model.train(), optimizer, batch_examples, batch, 1e-4, 1.0, device)
    seconds = time.time() - start
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    out = dict(method=name, preset=preset, seq_len=seq_len, batch=batch, device=device, loss=loss, step_s=seconds,
               trainable=sum(p.numel() for p in params), **weights, optimizer_bytes=state, start_bytes=tracker.start,
               peak_bytes=tracker.peak,
               ru_maxrss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if device.startswith("cuda"):
        out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tinyllama-1.1b")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--methods", default="lora-fp32,lora-bf16,qlora-bf16", help=f"from {', '.join(METHODS)}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one configuration and print its JSON
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.preset, args.one, args.seq_len, args.batch, args.device)))
        return
    rows = []
    for name in args.methods.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--preset", args.preset, "--seq-len", str(args.seq_len),
               "--batch", str(args.batch), "--device", args.device]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        rows.append(res)
        gib = lambda k: res[k] / 2**30
        print(f"{name:<11} peak {gib('peak_bytes'):6.3f} GiB (weights: frozen {gib('frozen_bytes'):.3f}, trained "
              f"{gib('trained_bytes'):.3f}; optimizer state {gib('optimizer_bytes'):.3f}); process peak RSS "
              f"{res['ru_maxrss_bytes'] / 2**30:.2f} GiB; {res['trainable']:,} trained parameters; step "
              f"{res['step_s']:.1f} s" + (f"; CUDA max allocated {res['cuda_max_allocated_bytes'] / 2**30:.3f} GiB"
                                          if "cuda_max_allocated_bytes" in res else ""), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
