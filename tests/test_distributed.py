"""Distributed training on the CPU: gloo, two processes.

What a run must not change: the per-step losses on 1 or 2 processes (FSDP2 and DDP, with gradient accumulation and
activation checkpointing), checkpoints saved on N processes and resumed on M, a SIGTERM that leaves a checkpoint
and asks Slurm to requeue, and the launch commands of examples/launch.md as written.
"""
import csv
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minillm import checkpoint as C
from minillm import distributed as D
from minillm.config import TrainConfig
from minillm.train import build_model
from workers import train_worker
from minillm.config import LlamaConfig
from minillm.model import Llama
from minillm.pretrain import mfu, peak_tflops

ROOT = Path(__file__).resolve().parent.parent
STEPS, STOP = 12, 6
# debug model, float32, 8 sequences of 64 tokens per step in micro-batches of 2: 4 micro-steps on one process,
# 2 on each of two; a checkpoint only where a run stops
RECIPE = dict(data=("builtin?max_bytes=300000",), max_steps=STEPS, global_batch=8, micro_batch=2, seq_len=64,
              warmup=3, eval_every=0, eval_batches=2, log_every=1, save_every=0, sample_tokens=0, device="cpu")


def build(cfg, seed=0, ac="none", parallel="none"):
    "The training model builder on this process's CPU, with the recipe fields the tests vary."
    tcfg = TrainConfig(seed=seed, activation_checkpointing=ac, parallel=parallel, device="cpu")
    return build_model(cfg, tcfg, torch.device("cpu"))


def env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")


def run_dir(base, name, cache=None):
    "A run folder; its data cache (tokenizer, token shards) copied from `cache` so nothing is made twice."
    out = base / name
    if cache is not None:
        shutil.copytree(cache / "data", out / "data")
    return out


def close(a: dict, b: dict, steps, tol=1e-5):
    for s in steps:
        assert abs(a[s] - b[s]) <= tol, f"step {s}: {a[s]} vs {b[s]}"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # two processes on two cores: no oversubscription
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------- in one process


@pytest.mark.parametrize("tie", [False, True])
def test_meta_build_equals_plain_init(tie):
    cfg = LlamaConfig.from_name("debug", tie_embeddings=tie)
    model = build(cfg, seed=3)
    after = torch.get_rng_state()
    torch.manual_seed(3)
    ref = Llama(cfg)
    assert torch.equal(after, torch.get_rng_state())  # the generator is left where a plain build leaves it
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k
    assert (model.output.weight is model.tok_embeddings.weight) == tie
    assert torch.equal(model.rope_cos, ref.rope_cos)


def test_activation_checkpointing_keeps_gradients_and_saves_memory():
    cfg = LlamaConfig.from_name("debug")
    x = torch.randint(0, cfg.vocab_size, (3, 48))
    y = torch.randint(0, cfg.vocab_size, (3, 48))
    grads, memory = {}, {}
    for mode in D.AC_MODES:
        model = build(cfg, ac=mode, seed=1)
        memory[mode] = D.activation_memory(model, x, y)
        model(x, y).backward()
        grads[mode] = [p.grad for p in model.parameters()]
    for mode in ("selective", "full"):
        for a, b in zip(grads["none"], grads[mode]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert memory["full"] < memory["selective"] < memory["none"], memory


def test_bad_choices_are_one_clear_error():
    with pytest.raises(ValueError, match="not one of auto, none, ddp, fsdp"):
        build(LlamaConfig.from_name("debug"), parallel="zero3")
    with pytest.raises(ValueError, match="needs a process group"):
        build(LlamaConfig.from_name("debug"), parallel="ddp")
    with pytest.raises(ValueError, match="not one of none, selective, full"):
        build(LlamaConfig.from_name("debug"), ac="some")
    with pytest.raises(ValueError, match="must be a positive integer"):
        D.spawn(print, 0)


def test_sharded_checkpoint_round_trip_and_safe_metadata(tmp_path):
    cfg = LlamaConfig.from_name("debug")
    model = build(cfg, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    model(x, x).backward()
    opt.step()
    C.save_sharded(tmp_path / "ck", model, opt)
    other = build(cfg, seed=5)
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-3)
    C.load_sharded(tmp_path / "ck", other, opt2)
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert opt2.param_groups[0]["betas"] == (0.9, 0.95)
    assert torch.equal(opt2.state[next(other.parameters())]["exp_avg"], opt.state[next(model.parameters())]["exp_avg"])
    # metadata that would run code is refused before anything is loaded
    meta = tmp_path / "ck" / ".metadata"
    meta.write_bytes(pickle.dumps(os.system))
    with pytest.raises(ValueError, match="refusing"):
        C.load_sharded(tmp_path / "ck", other)
    with pytest.raises(FileNotFoundError, match="no .metadata"):
        C.load_sharded(tmp_path, other)


def test_preemption_flag_and_requeue(tmp_path, monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    with D.Preemption() as p:
        assert not p.requested()
        os.kill(os.getpid(), signal.SIGTERM)  # caught: only a flag is set
        time.sleep(0.05)
        assert p.requested() and p.received == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back
    # under Slurm, rank 0 asks scontrol to requeue the job
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'called'}\n")
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert not D.Preemption.requeue()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert D.Preemption.requeue()
    assert (tmp_path / "called").read_text().split() == ["requeue", "4242"]


def test_peak_flops_and_mfu():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == (989.0, "H100 SXM")
    assert peak_tflops("NVIDIA H100 PCIe")[0] == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-40GB") == (312.0, "A100")
    assert peak_tflops("NVIDIA A10")[0] == 125.0
    assert peak_tflops("NVIDIA GeForce GTX 1080")[0] is None
    assert peak_tflops("NVIDIA A100-SXM4-40GB", override=400)[0] == 400
    with pytest.raises(ValueError, match="positive"):
        peak_tflops(override=-1)
    cfg = LlamaConfig.from_name("tinyllama-1.1b")
    # TinyLlama's reported 24k tokens/s per A100 is 56% MFU under this convention
    assert round(mfu(24_000, cfg.flops_per_token(2048), 312.0), 2) == 0.56


# ------------------------------------------------------------------------------------------- two processes


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    "The reference: one process, 12 steps, stopped (and checkpointed) after step 6 and resumed."
    base = tmp_path_factory.mktemp("runs")
    out = run_dir(base, "single")
    first = train_worker("debug", dict(RECIPE, out_dir=str(out)), stop_at=STOP)
    shutil.copytree(out, base / "single-at-6")
    rest = train_worker("debug", dict(RECIPE, out_dir=str(out)), resume=True)
    assert first["stopped_by"] == "stop_at" and rest["step"] == STEPS
    return base, {**first["losses"], **rest["losses"]}


def test_fsdp_ddp_and_resharding_keep_the_losses(single):
    base, ref = single
    cache = base / "single"
    # FSDP2 on 2 processes with selective checkpointing: the same first 6 losses; a sharded checkpoint at 6
    fsdp = run_dir(base, "fsdp", cache)
    a = D.spawn(train_worker, 2, "debug", dict(RECIPE, out_dir=str(fsdp), parallel="fsdp",
                                                activation_checkpointing="selective"), stop_at=STOP,
                checkpoint_weights=True)[0]
    assert a["world_size"] == 2 and sorted(a["losses"]) == list(range(1, STOP + 1))
    close(a["losses"], ref, range(1, STOP + 1))
    ckpt = fsdp / "checkpoints" / f"step-{STOP:07d}"
    assert (ckpt / ".metadata").is_file() and (ckpt / "__1_0.distcp").is_file()

    # saved on 2, loaded on 1: the very weights the 2 processes load
    from minillm.checkpoint import Checkpoint

    plain = Llama(LlamaConfig.from_name("debug"))
    Checkpoint(fsdp).load_model(plain)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, a["weights"][k]), k

    # ... and resumed on 1 (FSDP shards → a plain model): steps 7-12 as if never interrupted
    one = run_dir(base, "fsdp-on-1")
    shutil.copytree(fsdp, one)
    r1 = train_worker("debug", dict(RECIPE, out_dir=str(one)), resume=True)
    close(r1["losses"], ref, range(STOP + 1, STEPS + 1))

    # ... and on 2 with DDP (full activation checkpointing): the same again
    ddp = run_dir(base, "fsdp-on-ddp")
    shutil.copytree(fsdp, ddp)
    b = D.spawn(train_worker, 2, "debug", dict(RECIPE, out_dir=str(ddp), parallel="ddp",
                                                activation_checkpointing="full"), resume=True)[0]
    assert max(b["losses"]) == STEPS and b["world_size"] == 2
    close(b["losses"], ref, range(STOP + 1, STEPS + 1))


def test_single_process_checkpoint_resumes_sharded(single):
    base, ref = single
    out = base / "single-on-fsdp"
    shutil.copytree(base / "single-at-6", out)
    c = D.spawn(train_worker, 2, "debug", dict(RECIPE, out_dir=str(out), parallel="fsdp"), resume=True)[0]
    close(c["losses"], ref, range(STOP + 1, STEPS + 1))
    assert (out / "checkpoints" / f"step-{STEPS:07d}" / ".metadata").is_file()


# ------------------------------------------------------------------------------------------- the command line


def launch_commands() -> list[str]:
    "The CPU commands of examples/launch.md, runnable without the console script installed."
    text = (ROOT / "examples" / "launch.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    cmds = [l.strip() for b in blocks for l in b.splitlines() if "--preset debug" in l]
    out = []
    for c in cmds:
        c = re.sub(r"^minillm ", f"{sys.executable} -m minillm ", c)
        c = re.sub(r"^torchrun ", f"{sys.executable} -m torch.distributed.run ", c)
        out.append(c)
    return out


def metrics(path):
    with open(path, newline="") as f:
        return {int(r["step"]): r for r in csv.DictReader(f)}


def test_launch_doc_cpu_commands(tmp_path):
    """The two CPU commands of examples/launch.md, as written: the debug recipe with its default micro-batch on one
    process, then on two, where the micro-batch is fitted (8 → 4 per process); the losses stay the same."""
    cmds = launch_commands()
    assert len(cmds) == 2 and "torch.distributed.run --nproc_per_node 2" in cmds[1], cmds
    assert all("--micro-batch" not in c for c in cmds), cmds  # the recipe's own micro-batch: 8, at most
    said = []
    for c in cmds:
        res = subprocess.run(c.split(), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        said.append(res.stderr)
    assert "(of at most" not in said[0]  # one process takes the 8 sequences in one micro-batch of 8
    assert "micro-batch 4 (of at most 8): 8 sequences per step over 2 process(es) in 1 micro-step(s) each" in said[1]
    assert "2 processes" in said[1]
    one, two = metrics(tmp_path / "runs/cpu-1/metrics.csv"), metrics(tmp_path / "runs/cpu-2/metrics.csv")
    assert one.keys() == two.keys() and 6 in one
    losses = [(s, col) for s in one for col in ("loss", "val_loss") if one[s][col]]
    assert {(1, "loss"), (6, "loss"), (0, "val_loss"), (6, "val_loss")} <= set(losses), losses
    for s, col in losses:
        assert two[s][col] and abs(float(one[s][col]) - float(two[s][col])) <= 1e-5, (s, col, one[s][col], two[s][col])
    assert two[6]["tokens_per_s"] and float(two[6]["peak_mem_gib"]) > 0


def test_sigterm_checkpoints_and_requeues(tmp_path):
    """SIGTERM to torchrun (what Slurm sends at preemption): both workers stop at the same step, save a sharded
    checkpoint, and rank 0 asks Slurm to requeue the job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    (bin_dir / "scontrol").chmod(0o755)
    e = dict(env(), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_ID="77")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "minillm", "train",
           "--preset", "debug", "--out", str(out), "--max-steps", "5000", "--micro-batch", "4", "--eval-every", "0",
           "--no-progress"]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and p.poll() is None:  # wait until training is under way
            m = out / "metrics.csv"
            if m.is_file() and any(int(s) > 0 for s in metrics(m)):
                break
            time.sleep(0.2)
        assert p.poll() is None, p.communicate()[0][-3000:]
        p.send_signal(signal.SIGTERM)
        log = p.communicate(timeout=120)[0]
    finally:
        if p.poll() is None:
            p.kill()
    assert "saving at step" in log, log[-3000:]
    from minillm.checkpoint import Checkpoint

    ck = Checkpoint(out)
    assert ck.sharded and 0 < ck.step < 5000
    model = Llama(ck.config)
    ck.load_model(model)  # loadable by one process
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "77"]


# ------------------------------------------------------------------------------------------- a real Slurm


def slurm_job_state(job: str) -> str:
    res = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
    m = re.search(r"JobState=(\w+)", res.stdout)
    return m.group(1) if m else "GONE"


@pytest.mark.integration
def test_slurm_preemption_requeues_and_resumes(tmp_path):
    """examples/slurm/pretrain.sbatch on a one-node Slurm (set up by examples/slurm/local-cluster.sh: root, apt):
    2 CPU processes train; a job in the `high` partition preempts them; they checkpoint and requeue; the job
    restarts, resumes and finishes with the losses of an uninterrupted one-process run."""
    assert os.geteuid() == 0, "this test installs and starts Slurm: run it as root"
    subprocess.run(["bash", str(ROOT / "examples/slurm/local-cluster.sh")], check=True, capture_output=True)
    cpus = os.cpu_count()
    script = (ROOT / "examples/slurm/pretrain.sbatch").read_text()
    for old, new in (("--nodes=2", "--nodes=1"), ("#SBATCH --gpus-per-node=8\n", ""), ("--cpus-per-task=32", f"--cpus-per-task={cpus}"),
                     ("--job-name=minillm", "--job-name=minillm-test\n#SBATCH --partition=low")):
        assert old in script, old
        script = script.replace(old, new)
    job_file = tmp_path / "job.sbatch"
    job_file.write_text(script)
    args = ["--max-steps", "300", "--micro-batch", "4", "--eval-every", "100", "--device", "cpu", "--threads", "1"]
    e = dict(env(), PRESET="debug", NPROC="2", OUT=str(tmp_path / "run"),
             PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    sub = subprocess.run(["sbatch", "--parsable", str(job_file), *args], cwd=tmp_path, env=e, capture_output=True,
                         text=True, check=True)
    job = sub.stdout.strip().split(";")[0]
    log = tmp_path / f"minillm-test-{job}.out"
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # training under way
            m = tmp_path / "run" / "metrics.csv"
            if m.is_file() and any(int(s) >= 10 for s in metrics(m)):
                break
            time.sleep(1)
        else:
            pytest.fail(f"the job never started training:\n{log.read_text() if log.exists() else ''}")
        high = subprocess.run(["sbatch", "--parsable", "-p", "high", "-c", str(cpus), "--wrap", "sleep 15",
                               "-o", str(tmp_path / "high.out")], cwd=tmp_path, capture_output=True, text=True,
                              check=True).stdout.strip()
        deadline = time.time() + 600
        while time.time() < deadline and "done: 300 steps" not in (log.read_text() if log.exists() else ""):
            time.sleep(2)
        text = log.read_text()
        assert "done: 300 steps" in text, text[-4000:]
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    assert slurm_job_state(high) in ("COMPLETED", "GONE")
    assert "saving at step" in text and "requeued" in text, text[-4000:]
    assert "(restart 1)" in text and "resuming from" in text, text[-4000:]
    # the preempted, requeued and resumed run equals one uninterrupted process
    ref = subprocess.run([sys.executable, "-m", "minillm", "train", "--preset", "debug", "--out", str(tmp_path / "ref"),
                          *args, "--no-progress"], cwd=tmp_path, env=env(), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-3000:]
    got, want = metrics(tmp_path / "run/metrics.csv"), metrics(tmp_path / "ref/metrics.csv")
    assert got.keys() == want.keys()
    for s in want:
        for col in ("loss", "val_loss"):
            if want[s][col]:
                assert abs(float(got[s][col]) - float(want[s][col])) <= 1e-5, (s, col)
