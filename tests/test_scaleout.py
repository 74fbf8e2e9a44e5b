"""The scale-out path: what a GPU cluster run goes through, checked on CPUs.

Process-group backends for CUDA runs, kernels and bf16 under FSDP (with the closing sample), kernels under DDP and
activation checkpointing, the micro-batch fitted to the world size, a time limit in seconds (on an injected clock),
validation text split off by source unit, a loader that reads each epoch's tokens once, held-out validation text,
and `minillm plan`.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import minillm.train as T
from minillm import distributed as D
from minillm.attention import KVCache
from minillm.config import LlamaConfig
from minillm.corpora import Splitter, builtin_corpus, local_documents, training_documents
from minillm.data import Loader, TokenDataset, fit_micro_batch, permute, prepare
from minillm.pretrain import activation_elements, plan_run
from minillm.checkpoint import Checkpoint, load_model
from minillm.config import TrainConfig
from minillm.metrics import MetricsLog
from minillm.train import TimeBudget, prepare_data, tokenizer_for, train

ROOT = Path(__file__).resolve().parent.parent
CFG = LlamaConfig.from_name("debug")


def env(**extra):
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
                **extra)


def torchrun(*args, cwd, extra_env=None, timeout=420, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m", "minillm",
           *args]
    return subprocess.run(cmd, cwd=cwd, env=env(**(extra_env or {})), capture_output=True, text=True, timeout=timeout)


def minillm(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "minillm", *args], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    "A text file of the built-in corpus, its tokenizer and token shards."
    d = tmp_path_factory.mktemp("corpus")
    text = d / "text.txt"
    text.write_text("\n\n".join(doc.text for doc in builtin_corpus(max_bytes=150_000)))
    tok = tokenizer_for(str(text), CFG.vocab_size, d / "cache", verbose=False)
    return text, tok, prepare_data(str(text), tok, d / "cache", progress=False)


def tcfg(out, **kw):
    base = dict(out_dir=str(out), data=("unused",), lr=3e-3, min_lr=3e-4, warmup=3, max_steps=12, global_batch=8,
                micro_batch=4, seq_len=32, eval_every=0, eval_batches=2, save_every=0, log_every=1, sample_tokens=0)
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------ process groups and KV cache


def test_cuda_runs_get_a_cpu_backend_beside_nccl(monkeypatch):
    assert D.process_group_backend("cuda:3") == "cpu:gloo,cuda:nccl"
    assert D.process_group_backend(torch.device("cuda")) == "cpu:gloo,cuda:nccl"
    assert D.process_group_backend("cpu") == "gloo"
    # what init_distributed asks torch for, for a CUDA run of 2 processes (no GPU needed to see it)
    seen = {}
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(D.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(D.dist, "init_process_group", lambda backend, **kw: seen.update(backend=backend, **kw))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env_ = D.init_distributed("cuda")
    assert seen["backend"] == "cpu:gloo,cuda:nccl" and env_.device == torch.device("cuda", 1)
    assert seen["device_id"] == torch.device("cuda", 1)


def test_kv_cache_follows_the_compute_dtype():
    cache = KVCache(2, 2, 16, 8, dtype=torch.float32)  # made from float32 (sharded) weights
    k = torch.randn(2, 2, 3, 8, dtype=torch.bfloat16)
    keys, values = cache.update(k, k + 1, 0)
    assert keys.dtype == values.dtype == torch.bfloat16 and torch.equal(keys, k)
    # and the model under bf16 autocast generates through the cache (the closing sample's path)
    from minillm.generate import generate
    from minillm.model import Llama

    model = Llama(CFG)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generate(model, [1, 2, 3], 5, temperature=0)
    assert len(out) == 8


# ------------------------------------------------------------------------------------ batch shape


def test_micro_batch_is_an_upper_bound_fitted_to_the_world_size():
    assert fit_micro_batch(16, 16, 2) == 8  # the toy recipe on 2 processes
    assert fit_micro_batch(8, 8, 2) == 4  # the debug recipe on 2 processes
    assert fit_micro_batch(1024, 8, 16) == 8  # TinyLlama on 16 GPUs: 8 micro-steps of 8
    assert fit_micro_batch(12, 5, 1) == 4 and fit_micro_batch(12, 5, 3) == 4 and fit_micro_batch(7, 8, 1) == 7
    with pytest.raises(ValueError, match="global_batch=16 is not a multiple of world_size=3"):
        fit_micro_batch(16, 8, 3)
    for preset in ("toy", "debug", "tinystories-15m", "tinyllama-1.1b"):
        t = TrainConfig.from_preset(preset)
        for world in (1, 2, 4, 8):
            if t.global_batch % world == 0:
                m = fit_micro_batch(t.global_batch, t.micro_batch, world)
                assert m <= t.micro_batch and t.global_batch % (m * world) == 0


# ------------------------------------------------------------------------------------ torchrun on CPUs


def test_torchrun_bf16_fsdp_triton_kernels_and_closing_sample(tmp_path):
    """bf16 FSDP with full activation checkpointing, the Triton kernels (interpreted on the CPU) and the default
    micro-batch: the kernels are installed under FSDP and checkpointing, the closing sample generates with a bf16 KV
    cache, the run finishes."""
    res = torchrun("train", "--preset", "debug", "--dtype", "bfloat16", "--max-steps", "2", "--time-limit", "0",
                   "--kernels", "triton", "--activation-checkpointing", "full", "--prompt", "def", "--sample-tokens", "3",
                   "--eval-every", "0", "--out", "run", "--no-progress", cwd=tmp_path,
                   extra_env=dict(TRITON_INTERPRET="1"))
    assert res.returncode == 0, res.stderr[-4000:]
    assert "kernels: norm=triton rope=triton swiglu=triton loss=triton attention=sdpa" in res.stderr
    assert "micro-batch 4 (of at most 8)" in res.stderr and "2 processes" in res.stderr
    assert res.stdout.startswith("def") and "kernels:" not in res.stdout  # the sample alone is text
    rows = MetricsLog.read(tmp_path / "run" / "metrics.csv")
    assert [r["step"] for r in rows if r["loss"]] == ["1", "2"]
    assert all(np.isfinite(float(r["loss"])) for r in rows if r["loss"])


def test_fsdp_on_one_process_saves_and_resumes(tmp_path, corpus):
    """`--parallel fsdp` on a single process (one GPU) shards nothing across ranks, but its weights are DTensors all the
    same: the checkpoint is written with torch.distributed.checkpoint, a resume continues from it, and the model loads
    from it for generation."""
    text, _, _ = corpus
    args = ("train", "--preset", "debug", "--data", str(text), "--parallel", "fsdp", "--time-limit", "0", "--out", "run",
            "--no-progress", "--eval-every", "0", "--save-every", "3")
    res = torchrun(*args, "--max-steps", "3", cwd=tmp_path, nproc=1)
    assert res.returncode == 0, res.stderr[-4000:]
    assert Checkpoint(tmp_path / "run").sharded and Checkpoint(tmp_path / "run").step == 3
    res = torchrun(*args, "--max-steps", "5", "--resume", cwd=tmp_path, nproc=1)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "step-0000003 at step 3" in res.stderr
    steps = [int(r["step"]) for r in MetricsLog.read(tmp_path / "run" / "metrics.csv") if r["loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == 5  # continued, not restarted
    model, _, ckpt = load_model(tmp_path / "run")
    assert ckpt.step == 5 and all(torch.isfinite(p).all() for p in model.parameters())


def test_kernels_flag_and_what_the_run_prints(tmp_path, corpus):
    text, _, _ = corpus
    res = minillm("train", "--preset", "debug", "--data", str(text), "--max-steps", "25", "--time-limit", "900",
                  "--out", "run", "--no-progress", "--kernels", "torch", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    # a generous time limit runs every step (it used to stop at step 8, comparing steps with seconds)
    assert "done: 25 steps (max steps)" in res.stderr
    assert "kernels: norm=torch rope=torch swiglu=torch loss=torch attention=sdpa" in res.stderr
    assert Checkpoint(tmp_path / "run").step == 25
    res = minillm("train", "--preset", "debug", "--kernels", "cuda", cwd=tmp_path)
    assert res.returncode == 2 and "invalid choice: 'cuda'" in res.stderr


def test_kernels_under_ddp_and_activation_checkpointing(tmp_path, corpus, capsys):
    """DDP around a model with full activation checkpointing and the Triton kernels, built the way a run of two
    processes builds it: the line the run prints is read from the model it trains, and a forward and backward pass
    through DDP go through the kernels, each block's norms twice (the forward pass, then its recomputation in the
    backward pass). The process group is PyTorch's test backend `fake` (two ranks in this process, collectives that
    do nothing), so the gradients are not exchanged (`no_sync`); test_distributed trains DDP on two processes."""
    from torch import distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from minillm.norm import RMSNorm

    _, tok, data = corpus
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        cfg = LlamaConfig.from_name("debug", kernels="triton")
        run = T.Run(cfg, tcfg(tmp_path / "run", parallel="ddp", activation_checkpointing="full", global_batch=4),
                    data, tok, progress=False)
        run.log.close()
        run.lock.release()
        said = capsys.readouterr().out  # `train` prints; the command line sends it to standard error
        assert "kernels: norm=triton rope=triton swiglu=triton loss=triton attention=sdpa" in said
        assert "micro-batch 2 (of at most 4)" in said and isinstance(run.model, nn.parallel.DistributedDataParallel)
        calls = {"blocks": 0, "final": 0}
        for name, m in D.unwrap(run.model).named_modules():
            if isinstance(m, RMSNorm):
                assert m.norm_fn.__module__ == "minillm.kernels.rmsnorm", name

                def counted(*args, fn=m.norm_fn, where="blocks" if name.startswith("layers.") else "final"):
                    calls[where] += 1
                    return fn(*args)
                m.norm_fn = counted
        x, y = next(iter(run.loader.micro_batches(0)))
        with run.model.no_sync():
            loss = run.model(x, targets=y)
            loss.backward()
        assert torch.isfinite(loss) and all(p.grad is not None for p in run.model.parameters())
        assert calls == {"blocks": 2 * 2 * cfg.n_layers, "final": 1}  # 2 norms a block, each run twice
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------ the time limit


class SlowModel(nn.Module):
    "A model whose every forward pass takes `seconds` on a fake clock."

    def __init__(self, model, clock, seconds):
        super().__init__()
        self.module, self.clock, self.seconds = model, clock, seconds

    def forward(self, x, targets=None, **kw):
        self.clock.now += self.seconds
        return self.module(x, targets=targets, **kw)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def slow_training(monkeypatch, seconds):
    clock = FakeClock()
    build = T.build_model
    monkeypatch.setattr(T, "build_model", lambda cfg, t, device: SlowModel(build(cfg, t, device), clock, seconds))
    return clock


def test_a_tight_time_limit_ends_evaluated_and_saved_inside_it(corpus, tmp_path, monkeypatch):
    _, tok, data = corpus
    clock = slow_training(monkeypatch, 0.5)  # 2 micro-batches: 1 s a step; an evaluation of 2 batches: 1 s
    budget = TimeBudget(60.0, clock=clock)
    res = train(CFG, tcfg(tmp_path, max_steps=1000, warmup=100, eval_every=20, save_every=25), data, tok,
                progress=False, verbose=False, budget=budget)
    elapsed = clock() - budget.started
    assert res.stopped_by == "time_limit" and elapsed <= 60.0, elapsed
    assert elapsed >= 0.9 * 60.0, elapsed  # the end was budgeted from measurements, not guessed
    ck = Checkpoint(tmp_path)
    assert ck.step == res.step and res.val_loss is not None
    rows = MetricsLog.read(tmp_path / "metrics.csv")
    assert rows[-1]["step"] == str(res.step) and rows[-1]["val_loss"]
    # the schedule was refit to the time: it ends near the last step, its warmup scaled with it (never inside it)
    sched = ck.state["schedule"]
    assert sched["fitted"] and sched["max_steps"] < 1000 and 0 < sched["warmup"] < sched["max_steps"]
    assert abs(sched["max_steps"] - res.step) <= 0.15 * res.step
    assert float(rows[-1]["lr"] or [r for r in rows if r["lr"]][-1]["lr"]) < 0.2 * 3e-3


def test_a_generous_time_limit_runs_every_step(corpus, tmp_path, monkeypatch):
    _, tok, data = corpus
    clock = slow_training(monkeypatch, 0.5)
    res = train(CFG, tcfg(tmp_path, max_steps=30, warmup=40), data, tok, progress=False, verbose=False,
                budget=TimeBudget(10_000.0, clock=clock))
    assert res.step == 30 and res.stopped_by == "max_steps"
    sched = Checkpoint(tmp_path).state["schedule"]
    assert sched["max_steps"] == 30 and sched["warmup"] == 30  # warmup 40 > 30 steps: clipped


def test_time_limit_values(tmp_path):
    with pytest.raises(ValueError, match="time_limit=-5 must be a positive number"):
        TrainConfig(time_limit=-5)
    res = minillm("train", "--preset", "debug", "--time-limit", "-5", "--out", "run", cwd=tmp_path)
    assert res.returncode == 2 and "--time-limit -5" in res.stderr and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------ validation text


def long_lines(text, n=60):
    return [l.strip() for l in text.splitlines() if len(l.strip()) >= n]


def test_builtin_validation_lines_do_not_recur_in_training_text():
    """A module's code and its docstrings are one unit: split together, so validation docstrings are not training
    code comments. Split document by document, about half of the long validation lines appeared in training text."""
    split = Splitter(0.02, 1)
    train_lines, val_lines = set(), []
    for doc in builtin_corpus(max_bytes=2_000_000):
        if split(doc) == "val":
            val_lines += long_lines(doc.text)
        else:
            train_lines.update(long_lines(doc.text))
    assert len(val_lines) > 50
    recurring = sum(l in train_lines for l in val_lines) / len(val_lines)
    assert recurring < 0.05, recurring  # a few boilerplate lines recur across modules


def test_local_units_and_the_tokenizer_sees_training_text_only(tmp_path, monkeypatch):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(40):
        (folder / f"f{i:02d}.txt").write_text("".join(f"file {i} line {j}: {'lorem ipsum ' * 6}\n" for j in range(30)))
    docs = list(local_documents(folder))
    assert [d.unit for d in docs] == [f"f{i:02d}.txt" for i in range(40)]  # a file is a unit, never cut
    seen = []
    from minillm.tokenizer import Tokenizer

    real = Tokenizer.train
    monkeypatch.setattr(Tokenizer, "train", staticmethod(lambda texts, n, **kw: seen.extend(texts) or real(texts, n, **kw)))
    tok = tokenizer_for(str(folder), 300, tmp_path / "cache", verbose=False)
    val_units = {d.unit for d in docs} - {d.unit for d in training_documents(local_documents(folder))}
    assert val_units and all(f"file {int(u[1:3])} line" not in "".join(seen) for u in val_units)
    manifest = prepare(str(folder), tok, tmp_path / "tokens", num_workers=0, progress=False)
    assert manifest["splits"]["val"]["documents"] == len(val_units)


def test_a_lone_text_file_gives_whole_sections_and_a_long_line_is_enough(tmp_path):
    text = "".join(f"line {i:05d} " + "x" * 50 + "\n" for i in range(2000))
    path = tmp_path / "book.txt"
    path.write_text(text)
    sections = list(local_documents(path))
    assert "".join(d.text for d in sections) == text and len(sections) == 64
    assert all(d.text.endswith("\n") for d in sections) and len({d.unit for d in sections}) == 64
    one_line = tmp_path / "one_line.txt"
    one_line.write_text("word " * 700_000)  # 3.5 MB on a single line
    pieces = list(local_documents(one_line))
    assert len(pieces) == 64 and "".join(p.text for p in pieces) == one_line.read_text()
    split = Splitter()
    assert {split(p) for p in pieces} == {"train", "val"}


def test_held_out_validation_text(corpus, tmp_path, monkeypatch, capsys):
    """`minillm train --val-data FILE`: the run evaluates on the given text (every document held out), and its val loss
    is the mean cross-entropy of the checkpoint on that text's windows, computed here independently."""
    from minillm.cli import main

    text, _, _ = corpus
    held = tmp_path / "held.txt"
    held.write_text("def held_out(x):\n    return [x * k for k in range(10)]\n" * 12)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--preset", "debug", "--data", str(text), "--val-data", str(held), "--out", "run",
                 "--max-steps", "4", "--time-limit", "0", "--seq-len", "32", "--batch", "4", "--no-progress"]) == 0
    capsys.readouterr()
    model, tok, _ = load_model(tmp_path / "run")
    val = prepare_data(str(held), tok, tmp_path / "cache", progress=False, held_out=True)
    ids = torch.from_numpy(np.asarray(TokenDataset(val.datasets[0].path, "val").shards[0], dtype=np.int64))
    n = (len(ids) - 1) // 32
    assert 1 < n <= 16  # every window fits in the evaluation (debug: 4 batches of 4)
    x = torch.stack([ids[i * 32: i * 32 + 32] for i in range(n)])
    y = torch.stack([ids[i * 32 + 1: i * 32 + 33] for i in range(n)])
    with torch.no_grad():
        ref = F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    last = [r for r in MetricsLog.read(tmp_path / "run" / "metrics.csv") if r["val_loss"]][-1]
    assert last["step"] == "4" and float(last["val_loss"]) == pytest.approx(ref, rel=1e-4)


# ------------------------------------------------------------------------------------ the loader


def test_permute_is_a_permutation_for_any_size():
    for n in (1, 2, 3, 7, 64, 1000, 4097):
        for key in (0, 1, 2**63 + 5):
            assert sorted(permute(i, n, key) for i in range(n)) == list(range(n))
    assert [permute(i, 1000, 1) for i in range(10)] != [permute(i, 1000, 2) for i in range(10)]


def test_one_epoch_reads_every_token_once(tmp_path):
    from minillm.tokenizer import Tokenizer

    texts = [" ".join(f"w{(i * 7 + j) % 97}" for j in range(300)) for i in range(60)]
    tok = Tokenizer.train(texts, 300)
    prepare(texts, tok, tmp_path / "ds", num_workers=0, progress=False, val_fraction=0.0, min_val_documents=0,
            shard_tokens=5000)
    ds = TokenDataset(tmp_path / "ds")
    T_, G = 16, 8
    for world in (1, 2):
        loader = Loader(ds, T_, G, G // world, seed=3, world_size=world)
        windows = int(loader._windows[0][0][-1])
        covered = np.zeros(ds.n_tokens, dtype=bool)
        offsets = np.cumsum([0] + [len(s) for s in ds.shards])
        starts = set()
        for step in range(windows // G):
            for j in range(G):
                c, shard, start = loader.locate(step, j)
                covered[offsets[shard] + start + 1: offsets[shard] + start + T_ + 1] = True  # the targets
                starts.add((shard, start))
        assert len(starts) == windows // G * G  # no window twice within the epoch
        assert covered.mean() >= 0.95, covered.mean()  # drawn with replacement, one epoch saw 63%
    # the next epoch cuts the windows at another offset and visits them in another order
    e0 = [loader.locate(0, j) for j in range(G)]
    e1 = [loader.locate(windows // G, j) for j in range(G)]
    assert e0 != e1


def test_a_mixture_keeps_its_weights_and_each_part_is_read_without_replacement(tmp_path):
    from minillm.data import Mixture
    from minillm.tokenizer import Tokenizer

    texts = [" ".join(f"w{(i * 5 + j) % 89}" for j in range(200)) for i in range(40)]
    tok = Tokenizer.train(texts, 300)
    for name, part in (("a", texts[:20]), ("b", texts[20:])):
        prepare(part, tok, tmp_path / name, num_workers=0, progress=False, val_fraction=0.0, min_val_documents=0)
    mix = Mixture([(TokenDataset(tmp_path / "a"), 0.75), (TokenDataset(tmp_path / "b"), 0.25)])
    loader = Loader(mix, 16, 8, 8)
    picks = [loader.locate(s, j) for s in range(512) for j in range(8)]  # one mixture block
    share = np.mean([c == 0 for c, _, _ in picks])
    assert share == pytest.approx(0.75, abs=1 / 4096)
    for c in (0, 1):
        mine = [(sh, st) for cc, sh, st in picks if cc == c]
        n = int(loader._windows[c][0][-1])
        first_epoch = mine[:n]
        assert len(set(first_epoch)) == len(first_epoch)


# ------------------------------------------------------------------------------------ minillm plan


def test_plan_reproduces_tinyllamas_published_plan(tmp_path):
    """TinyLlama: 16 A100-40G, 16k tokens per GPU (micro-batch 8 × 2048) without activation checkpointing,
    24k tokens/s per GPU at 56% MFU, 3T tokens in about 90 days."""
    cfg, t = LlamaConfig.from_name("tinyllama-1.1b"), TrainConfig.from_preset("tinyllama-1.1b")
    p = plan_run(cfg, t, 16, gpu="a100-40gb", mfu=0.56)
    assert p["micro_batch"] * p["seq_len"] == 16_384 and p["accum"] == 8 and p["fits_none"]
    assert p["tokens_per_s_per_gpu"] == pytest.approx(24_000, rel=0.01)
    assert p["total_tokens"] == pytest.approx(3e12, rel=0.001) and p["days"] == pytest.approx(90, rel=0.02)
    assert not plan_run(cfg, t, 1, micro_batch=64, gpu="a100-40gb")["fits_none"]  # 128k tokens at once: no
    res = minillm("plan", "--preset", "tinyllama-1.1b", "--gpus", "16", "--gpu", "a100-40gb", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert re.search(r"23,8\d\d tokens/s per GPU", res.stdout) and re.search(r"take 9\d\.\d days", res.stdout)
    assert "micro-batch 8 per GPU (16,384 tokens)" in res.stdout


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_plan_activation_count_matches_a_measurement(kernels):
    "The planner's activations per token agree with what a real forward pass leaves for the backward pass."
    from minillm.kernels.switch import apply_kernels
    from minillm.model import Llama

    cfg = LlamaConfig.from_name("debug", n_layers=3)
    measured = {}
    for layers in (2, 3):  # the difference is one layer's activations, free of the embedding and the loss
        c = LlamaConfig.from_name("debug", n_layers=layers)
        model = apply_kernels(Llama(c), kernels, device="cpu")
        x = torch.randint(0, c.vocab_size, (2, c.max_seq_len))
        measured[layers] = D.activation_memory(model, x, x) / (2 * c.max_seq_len) / 4  # float32 elements per token
    per_layer = measured[3] - measured[2]
    assert per_layer == pytest.approx(activation_elements(cfg, kernels) / cfg.n_layers, rel=0.02)
