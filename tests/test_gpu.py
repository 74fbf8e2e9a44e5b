"""The scale-out path on a real GPU: `pytest -m gpu` (left out of the default run; see `make test-gpu`).

What CPU CI cannot see: an NCCL process group (with gloo beside it for CPU tensors), the Triton kernels compiled
rather than interpreted, bf16 autocast on CUDA, the closing sample's KV cache under FSDP, and an exact resume on the
GPU. Each test runs `minillm train` under torchrun on every GPU of the machine (one is enough), on the debug preset
and a text written by the test, so the whole file takes about a minute.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from minillm.data import builtin_corpus
from minillm.distributed import spawn
from minillm.metrics import MetricsLog
from workers import train_worker

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    assert torch.cuda.is_available(), "pytest -m gpu needs a CUDA GPU"
    p = tmp_path_factory.mktemp("gpu") / "text.txt"
    p.write_text("\n\n".join(doc.text for doc in builtin_corpus(max_bytes=300_000)))
    return p


def train(cwd, text, *args, timeout=600):
    "`torchrun --nproc_per_node <GPUs> -m minillm train --preset debug ...` in `cwd`."
    n = torch.cuda.device_count()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), "-m", "minillm",
           "train", "--preset", "debug", "--data", str(text), "--device", "cuda", "--no-progress", *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def losses(run: Path) -> list[float]:
    return [float(r["loss"]) for r in MetricsLog.read(run / "metrics.csv") if r["loss"]]


@pytest.mark.parametrize("parallel", ["none", "ddp", "fsdp"])
def test_every_mode_on_nccl_with_kernels_bf16_and_a_time_limit(tmp_path, text, parallel):
    """Evaluation at step 0 and every 4 steps (collectives of CPU and CUDA tensors), the Triton kernels installed in
    every mode, bf16, a positive time limit that does not cut the run short, the closing sample; then `--resume`."""
    res = train(tmp_path, text, "--parallel", parallel, "--dtype", "bfloat16", "--kernels", "triton", "--max-steps",
                "12", "--eval-every", "4", "--time-limit", "600", "--out", "run", "--prompt", "def")
    assert "kernels: norm=triton rope=triton swiglu=triton loss=triton attention=sdpa" in res.stderr
    assert "done: 12 steps (max steps)" in res.stderr
    assert res.stdout.startswith("def")
    rows = MetricsLog.read(tmp_path / "run" / "metrics.csv")
    assert [r["step"] for r in rows if r["val_bpb"]] == ["0", "4", "8", "12"]
    ls = losses(tmp_path / "run")
    assert all(np.isfinite(ls)) and ls[-1] < ls[0]
    # then the same command with --resume and a longer run: it continues from step 12 in the same mode
    res = train(tmp_path, text, "--parallel", parallel, "--dtype", "bfloat16", "--kernels", "triton", "--max-steps",
                "16", "--eval-every", "4", "--time-limit", "600", "--out", "run", "--prompt", "def", "--resume")
    assert "at step 12" in res.stderr and "done: 16 steps (max steps)" in res.stderr and res.stdout.startswith("def")
    steps = [int(r["step"]) for r in MetricsLog.read(tmp_path / "run" / "metrics.csv") if r["loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == 16 and all(np.isfinite(losses(tmp_path / "run")))


def test_fsdp_resume_is_exact_on_the_gpu(tmp_path, text):
    """12 steps at once, and 7 + 5 (stopped after step 7, then resumed): the same losses and weights, so the data
    order, the RNG and the optimizer state all come back on the GPU (fp32 with the Triton kernels, whose reductions
    may add in a different order from run to run: equal to fp32 rounding, not bit for bit)."""
    n = torch.cuda.device_count()
    recipe = dict(data=(str(text),), device="cuda", parallel="fsdp", dtype="float32", max_steps=12,
                  eval_every=6, save_every=6, time_limit=None)
    a = spawn(train_worker, n, "debug", dict(recipe, out_dir=str(tmp_path / "a")), checkpoint_weights=True)[0]
    b = spawn(train_worker, n, "debug", dict(recipe, out_dir=str(tmp_path / "b")), stop_at=7)[0]
    assert b["step"] == 7 and b["stopped_by"] == "stop_at"
    b = spawn(train_worker, n, "debug", dict(recipe, out_dir=str(tmp_path / "b")), resume=True,
              checkpoint_weights=True)[0]
    assert b["step"] == 12 and a["losses"].keys() == set(range(1, 13))
    assert a["losses"] == pytest.approx({s: b["losses"][s] for s in a["losses"]}, rel=1e-5)
    assert a["weights"].keys() == b["weights"].keys()
    for k in a["weights"]:
        torch.testing.assert_close(a["weights"][k], b["weights"][k], msg=k)
