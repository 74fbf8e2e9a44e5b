"""Safe with what users download and with what they already have.

Nothing in a checkpoint runs code on load (a battery of pickle gadgets through every loading path); a run folder
belongs to one run (refused when fresh, locked while training, even by a process that was killed, replaced only on
request); `export`, `quantize`, `merge` and `prune --force` replace only that command's earlier output; a run that did
not finish says so in its exit status; bad input is one line; files get ordinary permissions.
"""
import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import minillm.train as T
from minillm import checkpoint as C
from minillm.cli import main
from minillm.config import LlamaConfig
from minillm.corpora import builtin_corpus
from minillm.checkpoint import Checkpoint, load_model
from minillm.config import TrainConfig
from minillm.metrics import MetricsLog
from minillm.train import prepare_data, tokenizer_for, train

ROOT = Path(__file__).resolve().parent.parent
CFG = LlamaConfig.from_name("debug")


def env(**extra):
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
                **extra)


def minillm(*args, cwd, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "minillm", *args], cwd=cwd, env=kw.pop("env", env()),
                          capture_output=True, text=True, timeout=timeout, **kw)


def one_line_error(res, code=2):
    "The process failed with `code` and said why in one line, without a traceback."
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert res.returncode == code, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr[-3000:]
    return lines[0]


class Ran:
    "What `minillm ARGS` did when run in this process: its exit status and its standard error."

    def __init__(self, capsys, *args):
        self.returncode = main([str(a) for a in args])
        self.stderr = capsys.readouterr().err


def command(capsys, *args):
    return Ran(capsys, *args)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    text = d / "text.txt"
    text.write_text("\n\n".join(doc.text for doc in builtin_corpus(max_bytes=120_000)))
    tok = tokenizer_for(str(text), CFG.vocab_size, d / "cache", verbose=False)
    return text, tok, prepare_data(str(text), tok, d / "cache", progress=False)


@pytest.fixture(scope="module")
def small(corpus):
    "20 kB of the corpus: enough text to evaluate, calibrate or train a few steps on."
    path = corpus[0].parent / "small.txt"
    path.write_text(corpus[0].read_text()[:20_000])
    return path


def tcfg(out, **kw):
    base = dict(out_dir=str(out), data=("unused",), lr=3e-3, min_lr=3e-4, warmup=2, max_steps=4, global_batch=4,
                micro_batch=4, seq_len=32, eval_every=0, eval_batches=1, save_every=0, log_every=1, sample_tokens=0)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    "A finished run folder (debug model, a tokenizer, 4 steps)."
    _, tok, data = corpus
    out = tmp_path_factory.mktemp("runs") / "run"
    train(CFG, tcfg(out), data, tok, progress=False, verbose=False)
    return out


# ------------------------------------------------------------------------------------ pickle gadgets


def sharded_with(run, tmp_path, metadata: bytes) -> Path:
    "A copy of `run` whose latest checkpoint claims to be sharded and carries `metadata` as its DCP .metadata."
    copy = tmp_path / "crafted"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(run, copy)
    ck = Checkpoint(copy).path
    state = json.loads((ck / "state.json").read_text())
    state["weights"] = "sharded"
    (ck / "state.json").write_text(json.dumps(state))
    (ck / ".metadata").write_bytes(metadata)
    (ck / "optimizer_groups.json").write_text("[]")
    return copy


def stack_global(module: str, name: str, arg: str) -> bytes:
    "Protocol-4 pickle calling module.name(arg) through STACK_GLOBAL."
    def s(x):
        b = x.encode()
        return b"\x8c" + bytes([len(b)]) + b
    return b"\x80\x04" + s(module) + s(name) + b"\x93" + s(arg) + b"\x85R."


GADGETS = {
    "dotted name": b"ctorch.distributed.checkpoint.filesystem\nio.FileIO\n(S'PWNED'\nS'w'\ntR.",
    "dotted name, protocol 4": stack_global("torch.distributed.checkpoint.filesystem", "os.system", "touch PWNED"),
    "dotted name in an allowed module": b"ctorch\nserialization.os.system\n(S'touch PWNED'\ntR.",
    "builtins": b"cbuiltins\neval\n(S'open(\"PWNED\", \"w\")'\ntR.",
    "os.system": b"cos\nsystem\n(S'touch PWNED'\ntR.",
    "subprocess": b"csubprocess\nPopen\n((S'touch'\nS'PWNED'\nltR.",
    "io": b"cio\nFileIO\n(S'PWNED'\nS'w'\ntR.",
    "importlib": b"cimportlib\nimport_module\n(S'tabnanny'\ntR.",
    "functools.partial": b"cfunctools\npartial\n(cos\nsystem\nS'touch PWNED'\ntR(tR.",
    "a module outside the list": b"ctabnanny\ncheck\n(S'PWNED'\ntR.",
    "a DCP class through an attribute": stack_global("torch.distributed.checkpoint.metadata", "Metadata.__init__", "x"),
}


@pytest.mark.parametrize("gadget", list(GADGETS))
def test_crafted_metadata_runs_nothing_on_any_loading_path(corpus, run, tmp_path, gadget, monkeypatch):
    _, tok, data = corpus
    crafted = sharded_with(run, tmp_path, GADGETS[gadget])
    monkeypatch.chdir(tmp_path)
    was_imported = "tabnanny" in sys.modules
    from minillm.export import export

    model = LlamaConfig.from_name("debug")
    loads = {
        "load_model": lambda: load_model(crafted),
        "Checkpoint.load_model": lambda: Checkpoint(crafted).load_model(__import__("minillm.model").model.Llama(model)),
        "export": lambda: export(crafted, tmp_path / "exported"),
        "train --resume": lambda: train(CFG, tcfg(crafted), data, tok, resume=True, progress=False, verbose=False),
    }
    for path, load in loads.items():
        with pytest.raises(ValueError, match="refusing to load it") as e:
            load()
        assert "\n" not in str(e.value), path
        assert not (tmp_path / "PWNED").exists(), (gadget, path)
        assert ("tabnanny" in sys.modules) == was_imported, (gadget, path)
    assert not (tmp_path / "exported").exists()


def _reads(small):
    "Each command that reads a checkpoint, as argument lists with CKPT for the crafted one and OUT for what it writes."
    calibrate = ["--calibration-data", small, "--calibration-samples", 2]
    train = ["train", "--preset", "debug", "--data", small, "--out", "OUT", "--max-steps", 2, "--no-progress"]
    return {"quantize": ["quantize", "--ckpt", "CKPT", "--out", "OUT", "--bits", 8],
            "merge": ["merge", "CKPT", "RUN", "--out", "OUT"],
            "prune": ["prune", "--ckpt", "CKPT", "--out", "OUT", "--ffn-dim", 64, *calibrate],
            "eval": ["eval", "--ckpt", "CKPT", "--data", small, "--json", "OUT"],
            "train --init": [*train, "--init", "CKPT"],
            "train --teacher": [*train, "--teacher", "CKPT"]}


@pytest.mark.parametrize("reader", ["quantize", "merge", "prune", "eval", "train --init", "train --teacher"])
def test_crafted_metadata_runs_nothing_through_the_other_readers(run, small, reader, tmp_path, capsys, monkeypatch):
    """Every other command that reads a checkpoint (they share `minillm.checkpoint`'s reader) refuses a crafted
    `.metadata` in one line, before anything runs: no file made by the gadget, no module imported, no output (a run's
    folder holds only its token cache)."""
    monkeypatch.chdir(tmp_path)
    was_imported = "tabnanny" in sys.modules
    for gadget in ("dotted name", "os.system", "a module outside the list"):
        crafted = sharded_with(run, tmp_path / gadget, GADGETS[gadget])
        args = [{"CKPT": crafted, "RUN": run, "OUT": tmp_path / "out"}.get(a, a) for a in _reads(small)[reader]]
        line = one_line_error(command(capsys, *args))
        assert "refusing to load it" in line, (gadget, line)
        assert not (tmp_path / "PWNED").exists(), gadget
        assert ("tabnanny" in sys.modules) == was_imported, gadget
        out = tmp_path / "out"
        if reader.startswith("train"):  # a run tokenizes its data into its folder before it reads weights
            assert sorted(p.name for p in out.iterdir()) == [".minillm.lock", "data"], gadget
        else:
            assert not out.exists(), gadget


def test_the_reported_exploit_through_the_commands(corpus, run, tmp_path, capsys, monkeypatch):
    text, _, _ = corpus
    monkeypatch.chdir(tmp_path)
    crafted = sharded_with(run, tmp_path, GADGETS["dotted name"])
    for args in (["generate", "--ckpt", str(crafted), "--prompt", "x"],
                 ["export", "--ckpt", str(crafted), "--out", str(tmp_path / "exported")],
                 ["train", "--preset", "debug", "--out", str(crafted), "--resume", "--data", str(text), "--no-progress"]):
        line = one_line_error(command(capsys, *args))
        assert "refusing to load it" in line and not (tmp_path / "PWNED").exists(), args
    assert not (tmp_path / "exported").exists()


def test_a_real_sharded_checkpoint_still_loads(tmp_path):
    cfg = LlamaConfig.from_name("debug")
    model = T.build_model(cfg, TrainConfig(seed=0, device="cpu"), torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 512, (2, 8)), torch.randint(0, 512, (2, 8))).backward()
    opt.step()
    C.save_sharded(tmp_path / "ck", model, opt)
    other = T.build_model(cfg, TrainConfig(seed=1, device="cpu"), torch.device("cpu"))
    C.load_sharded(tmp_path / "ck", other, torch.optim.AdamW(other.parameters(), lr=1e-3))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


# ------------------------------------------------------------------------------------ a run folder is one run's


def test_a_fresh_run_into_another_runs_folder_is_refused(corpus, run, tmp_path, capsys):
    text, tok, data = corpus
    before = (run / "metrics.csv").read_text(), Checkpoint(run).path
    with pytest.raises(ValueError, match=r"holds another run .*--resume.*--out.*--overwrite"):
        train(CFG, tcfg(run), data, tok, progress=False, verbose=False)
    assert ((run / "metrics.csv").read_text(), Checkpoint(run).path) == before
    res = command(capsys, "train", "--preset", "debug", "--data", text, "--out", run, "--max-steps", 2, "--no-progress")
    assert "--resume" in one_line_error(res) and (run / "metrics.csv").read_text() == before[0]
    # --overwrite replaces what a run writes, and keeps the data cache
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "data").mkdir(exist_ok=True)
    (copy / "data" / "keep.txt").write_text("cache")
    res = train(CFG, tcfg(copy, max_steps=2), data, tok, progress=False, verbose=False, overwrite=True)
    assert res.step == 2 and Checkpoint(copy).step == 2 and (copy / "data" / "keep.txt").is_file()
    assert [r["step"] for r in MetricsLog.read(copy / "metrics.csv") if r["loss"]] == ["1", "2"]


# ------------------------------------------------------------------------------------ export --force


def test_export_force_replaces_only_an_earlier_export(run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    export = lambda out, *more: command(capsys, "export", "--ckpt", run, "--out", out, *more)
    for out in (run, run.parent):  # the run itself, or a folder holding it
        assert "is the run being exported" in one_line_error(export(out, "--force"))
    assert "holds files that are not an export" in one_line_error(export(Checkpoint(run).path, "--force"))
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    assert "holds files that are not an export" in one_line_error(export(other, "--force"))
    assert (other / "thesis.tex").read_text() == "years of work" and Checkpoint(run).step == 4
    assert export("hf").returncode == 0
    first = (tmp_path / "hf" / "model.safetensors").stat().st_mtime_ns
    assert "--force" in one_line_error(export("hf"))
    assert export("hf", "--force").returncode == 0
    assert (tmp_path / "hf" / "model.safetensors").stat().st_mtime_ns != first
    (tmp_path / "notgguf.gguf").write_text("my notes")
    assert "is not a GGUF file" in one_line_error(export("notgguf.gguf", "--format", "gguf", "--force"))
    assert (tmp_path / "notgguf.gguf").read_text() == "my notes"


FORCED = {  # each command that writes a folder: its arguments (OUT for the folder), what it calls its output
    "quantize": (["quantize", "--ckpt", "RUN", "--out", "OUT", "--bits", 8], "the checkpoint being quantized",
                 "a quantized checkpoint"),
    "merge": (["merge", "RUN", "RUN", "--out", "OUT"], "a model being merged", "a merged model"),
    "prune": (["prune", "--ckpt", "RUN", "--out", "OUT", "--ffn-dim", 64, "--calibration-data", "SMALL",
               "--calibration-samples", 2], "the checkpoint being pruned", "a pruned model"),
}


@pytest.mark.parametrize("name", list(FORCED))
def test_force_replaces_only_the_commands_own_earlier_output(name, run, small, tmp_path, capsys, monkeypatch):
    """quantize, merge and prune --force follow export's rule: never the input (or a folder holding it), never a
    folder of other files (which stay as they were), and an earlier output of the same command is replaced."""
    monkeypatch.chdir(tmp_path)
    args, role, kind = FORCED[name]
    cmd = lambda out, *more: command(capsys, *[{"RUN": run, "OUT": out, "SMALL": small}.get(a, a) for a in args], *more)
    step = Checkpoint(run).path
    for out in (run, run.parent):  # the run itself, or a folder holding it
        assert f"is {role}" in one_line_error(cmd(out, "--force")), out
    assert f"holds files that are not {kind} (e.g. optimizer.pt)" in one_line_error(cmd(step, "--force"))
    assert Checkpoint(run).path == step and (step / "state.json").is_file()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    assert f"holds files that are not {kind} (e.g. thesis.tex)" in one_line_error(cmd(other, "--force"))
    assert [p.name for p in other.iterdir()] == ["thesis.tex"] and (other / "thesis.tex").read_text() == "years of work"
    assert command(capsys, "export", "--ckpt", run, "--out", "exported").returncode == 0
    exported = {p.name: p.read_bytes() for p in (tmp_path / "exported").iterdir()}
    assert f"holds files that are not {kind}" in one_line_error(cmd("exported", "--force"))  # another command's
    assert {p.name: p.read_bytes() for p in (tmp_path / "exported").iterdir()} == exported
    assert cmd("first").returncode == 0
    assert "already exists; pass --force" in one_line_error(cmd("first"))
    before = {p.name: p.stat().st_ino for p in (tmp_path / "first").iterdir()}
    assert cmd("first", "--force").returncode == 0
    after = {p.name: p.stat().st_ino for p in (tmp_path / "first").iterdir()}
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in after)  # every file written anew
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "first", "notes"]  # no temporary folder left


# ------------------------------------------------------------------------------------ how a run ends


def test_a_second_writer_is_refused_and_sigterm_says_the_run_did_not_finish(corpus, tmp_path, capsys, monkeypatch):
    """One run trains; a second into the same folder is refused while it does; SIGTERM stops the first with a
    checkpoint and the documented exit status 75 (not 0: `minillm train && minillm export` must not export a
    half-trained model); then the folder is free again."""
    text, _, _ = corpus
    first = subprocess.Popen([sys.executable, "-m", "minillm", "train", "--preset", "debug", "--data", str(text),
                              "--out", "run", "--max-steps", "5000", "--eval-every", "0", "--no-progress"],
                             cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 200
        metrics = tmp_path / "run" / "metrics.csv"
        while time.time() < deadline and first.poll() is None and not (
                metrics.is_file() and any(r["loss"] for r in MetricsLog.read(metrics))):
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()[1][-3000:]
        monkeypatch.chdir(tmp_path)
        line = one_line_error(command(capsys, "train", "--preset", "debug", "--data", text, "--out", "run",
                                      "--max-steps", 2, "--no-progress"))
        assert "is in use by minillm train (pid" in line and str(first.pid) in line
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 75, (first.returncode, err[-2000:])
    assert "stopped by SIGTERM" in err and Checkpoint(tmp_path / "run").step > 0
    from minillm.files import FolderLock

    FolderLock(tmp_path / "run").acquire().release()  # the lock went with the process


def test_a_folder_locked_by_a_killed_process_is_free_again(tmp_path):
    "The run folder's lock goes with its holder even when that is killed outright (SIGKILL: no cleanup runs)."
    from minillm.files import FolderLock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom minillm.files import FolderLock\n"
                               "FolderLock(sys.argv[1]).acquire()\nprint('locked', flush=True)\ntime.sleep(300)",
                               str(tmp_path / "run")], env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=rf"is in use by minillm train \(pid {holder.pid} "):
            FolderLock(tmp_path / "run").acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    finally:
        holder.kill()
        holder.stdout.close()
    assert holder.returncode == -signal.SIGKILL
    assert (tmp_path / "run" / FolderLock.NAME).is_file()  # the lock file stays; the lock does not
    with FolderLock(tmp_path / "run"):
        pass


def test_ctrl_c_says_whether_a_checkpoint_exists(run, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "train_run", interrupted)
    monkeypatch.chdir(tmp_path)
    res = command(capsys, "train", "--preset", "debug", "--out", "fresh", "--no-progress")
    assert res.returncode == 130 and "no checkpoint was written yet" in res.stderr and "intact" not in res.stderr
    res = command(capsys, "train", "--preset", "debug", "--out", run, "--resume", "--no-progress")
    assert res.returncode == 130 and f"{Checkpoint(run).path}, is intact" in res.stderr


# ------------------------------------------------------------------------------------ one-line errors


def test_bad_command_lines_are_one_line(tmp_path, run, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    cases = [
        (["train", "--preset", "debug", "--out", "afile"], "is a file"),
        (["train", "--preset", "debug", "--out", "r2", "--threads", "-1"], "--threads -1"),
        (["train", "--preset", "debug", "--out", "r3", "--time-limit", "-5"], "--time-limit -5"),
        (["generate", "--ckpt", str(run), "--prompt", "x", "--temperature", "inf"], "temperature=inf"),
        (["generate", "--ckpt", str(run), "--prompt", "x", "--temperature", "nan"], "temperature=nan"),
    ]
    for args, expected in cases:
        assert expected in one_line_error(command(capsys, *args)), args
    assert not any((tmp_path / d).exists() for d in ("r2", "r3"))


def test_device_cuda_where_pytorch_sees_no_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    """`--device cuda` where this PyTorch sees no CUDA GPU is refused in one line. Where it sees one, the option must
    give the GPU, and the refusal is checked with the GPU hidden from PyTorch."""
    from minillm.distributed import resolve_device

    monkeypatch.chdir(tmp_path)
    if torch.cuda.is_available():
        assert resolve_device("cuda") == torch.device("cuda")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = one_line_error(command(capsys, "train", "--preset", "debug", "--out", "r1", "--device", "cuda"))
    assert "sees no CUDA GPU" in line and not (tmp_path / "r1").exists()


def test_an_hf_dataset_while_offline_is_one_line(tmp_path):
    e = env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    # a slice (max_bytes): a whole Hugging Face dataset is refused before any network (`minillm prepare` takes it)
    res = minillm("train", "--preset", "debug", "--data", "hf:nobody/no-such-dataset?max_bytes=100000", "--out", "run",
                  cwd=tmp_path, env=e)
    line = one_line_error(res)
    assert "hf:nobody/no-such-dataset" in line and "offline" in line


def unwritable_folder(tmp_path) -> Path:
    """A folder this process cannot create files in: one with permissions 0o555, or, for root (whom permissions do
    not stop), a folder of a file system that refuses writes (/sys, /proc)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    for candidate in (ro, Path("/sys/minillm-test"), Path("/proc/minillm-test")):
        try:
            candidate.mkdir(exist_ok=True)
            (candidate / "probe").write_text("x")
        except OSError:
            return candidate
        (candidate / "probe").unlink()
    raise AssertionError("no unwritable folder found to test with")


def test_read_only_folders_are_one_line(run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ro = unwritable_folder(tmp_path)
    line = one_line_error(command(capsys, "train", "--preset", "debug", "--out", ro / "run", "--no-progress"))
    assert "cannot write there" in line
    line = one_line_error(command(capsys, "export", "--ckpt", run, "--out", ro / "hf"))
    assert "cannot write there" in line
    assert not (ro / "hf").exists() and not (ro / "run").exists()


def test_disk_full_while_saving_is_one_line_and_keeps_the_last_checkpoint(corpus, tmp_path, monkeypatch, capsys):
    text, _, _ = corpus
    monkeypatch.chdir(tmp_path)
    args = ["train", "--preset", "debug", "--data", str(text), "--out", "run", "--max-steps", "4", "--save-every", "2",
            "--eval-every", "0", "--no-progress"]
    real = T.save_checkpoint
    calls = []

    def full_disk(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(T, "save_checkpoint", full_disk)
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()  # the run's progress, then the error: one line, no traceback
    assert "Traceback" not in "\n".join(err) and err[-1].startswith("minillm train: error: No space left on device")
    assert "step-0000002" in err[-1]
    assert Checkpoint(tmp_path / "run").step == 2


def test_model_inputs_and_losses():
    from minillm.model import Llama

    model = Llama(CFG)
    with pytest.raises(ValueError, match="empty batch"):
        model(torch.zeros(0, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="empty batch"):
        model(torch.zeros(2, 0, dtype=torch.long))
    x = torch.randint(0, 512, (2, 6))
    with pytest.raises(ValueError, match=r"target ids must be in \[0, vocab_size=512\) or -100"):
        model(x, targets=torch.full((2, 6), 512))
    # every target ignored: the loss is 0 and adds no gradient (not NaN), for both loss implementations
    from minillm.kernels.switch import apply_kernels

    for kernels in ("torch", "triton"):
        m = apply_kernels(Llama(CFG), kernels, device="cpu")
        loss = m(x, targets=torch.full((2, 6), -100))
        loss.backward()
        assert loss.item() == 0.0, kernels
        assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in m.parameters()), kernels


def test_a_long_single_line_text_is_enough(tmp_path):
    from minillm.tokenizer import Tokenizer

    line = tmp_path / "line.txt"
    line.write_text(" ".join(f"token{i % 5000}" for i in range(400_000)))  # 3.2 MB, no line break
    assert line.stat().st_size > 3_000_000
    tok = Tokenizer.train([line.read_text()[:200_000]], 300)
    data = prepare_data(str(line), tok, tmp_path / "cache", progress=False)
    assert data.datasets[0].n_tokens > 0 and data.datasets[0].open_split("val").n_tokens > 0


# ------------------------------------------------------------------------------------ permissions


def test_files_written_for_users_have_ordinary_permissions(corpus, small, tmp_path, capsys, monkeypatch):
    """Under umask 022 every file a command writes is 0644 and every folder 0755 (temporary files and folders are
    private, and some writers, safetensors among them, make their files private too)."""
    text, _, _ = corpus
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        for args in (["train", "--preset", "debug", "--data", text, "--out", "run", "--max-steps", 2,
                      "--eval-every", 0, "--no-progress"],
                     ["export", "--ckpt", "run", "--out", "hf"],
                     ["export", "--ckpt", "run", "--out", "model.gguf", "--format", "gguf"],
                     ["quantize", "--ckpt", "run", "--out", "q8", "--bits", 8],
                     ["eval", "--ckpt", "run", "--data", small, "--json", "eval.json"],
                     ["merge", "run", "hf", "--out", "merged"],
                     ["prune", "--ckpt", "run", "--out", "pruned", "--ffn-dim", 64, "--calibration-data", small,
                      "--calibration-samples", 2]):
            res = command(capsys, *args)
            assert res.returncode == 0, res.stderr[-3000:]
    finally:
        os.umask(old)
    paths = [p for p in tmp_path.rglob("*") if not p.name.startswith("__")]
    for made in ("q8/model.safetensors", "eval.json", "merged/merge.json", "pruned/prune.json", "model.gguf"):
        assert tmp_path / made in paths, made
    assert len(paths) > 40
    bad = [(str(p), oct(stat.S_IMODE(p.stat().st_mode))) for p in paths
           if stat.S_IMODE(p.stat().st_mode) != (0o755 if p.is_dir() else 0o644)]
    assert not bad, bad
