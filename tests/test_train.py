"""Training loop: bit-exact resume, checkpoints (atomic, corrupt, mismatched), the NaN stop, bad input, the CLI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import minillm.train as T
from minillm.config import LlamaConfig
from minillm.corpora import builtin_corpus
from minillm.data import Loader
from minillm.checkpoint import Checkpoint, find_checkpoint, load_model, save_checkpoint
from minillm.config import TrainConfig
from minillm.metrics import MetricsLog
from minillm.train import TrainingDiverged, lr_at, param_groups, prepare_data, tokenizer_for, train

ROOT = Path(__file__).resolve().parent.parent
CFG = LlamaConfig.from_name("debug")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    "A text file, its tokenizer and its token shards (built once for the module)."
    d = tmp_path_factory.mktemp("corpus")
    text = d / "text.txt"
    text.write_text("\n\n".join(doc.text for doc in builtin_corpus(max_bytes=150_000)))
    tok = tokenizer_for(str(text), CFG.vocab_size, d / "cache", verbose=False)
    data = prepare_data(str(text), tok, d / "cache", progress=False)
    return text, tok, data


def tcfg(out, **kw):
    base = dict(out_dir=str(out), data=("unused",), lr=3e-3, min_lr=3e-4, warmup=3, max_steps=12, global_batch=8,
                micro_batch=4, seq_len=32, eval_every=0, eval_batches=2, save_every=5, log_every=1, sample_tokens=0)
    return TrainConfig(**{**base, **kw})


def losses(run):
    return [(r["step"], r["loss"]) for r in MetricsLog.read(Path(run) / "metrics.csv") if r["loss"]]


def weights(run):
    from safetensors.torch import load_file

    return load_file(find_checkpoint(run) / "model.safetensors")


def test_resume_is_bit_exact(corpus, tmp_path):
    _, tok, data = corpus
    train(CFG, tcfg(tmp_path / "a"), data, tok, progress=False, verbose=False)
    res = train(CFG, tcfg(tmp_path / "b"), data, tok, progress=False, verbose=False, stop_at=7)
    assert res.stopped_by == "stop_at" and res.step == 7 and Checkpoint(tmp_path / "b").step == 7
    res = train(CFG, tcfg(tmp_path / "b"), data, tok, resume=True, progress=False, verbose=False)
    assert res.step == 12
    assert losses(tmp_path / "a") == losses(tmp_path / "b") and len(losses(tmp_path / "a")) == 12
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    oa, ob = Checkpoint(tmp_path / "a").optimizer_state(), Checkpoint(tmp_path / "b").optimizer_state()
    for sa, sb in zip(oa["state"].values(), ob["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_loader_state_round_trips_through_a_checkpoint(corpus, tmp_path):
    _, tok, data = corpus
    train(CFG, tcfg(tmp_path), data, tok, progress=False, verbose=False, stop_at=5)
    state = Checkpoint(tmp_path).state["loader"]
    fresh = Loader(data, 32, 8, 4, seed=0)
    assert state == json.loads(json.dumps({**fresh.state_dict(), "step": 5}))
    fresh.load_state_dict(state)
    assert fresh.step == 5
    for (x1, y1), (x2, y2) in zip(next(fresh), Loader(data, 32, 8, 4, seed=0).micro_batches(5)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(ValueError, match="global_batch"):
        Loader(data, 32, 16, 4, seed=0).load_state_dict(state)


class NaNAfter(nn.Module):
    "A model whose loss turns NaN from the `after`-th call on."

    def __init__(self, model, after):
        super().__init__()
        self.module, self.after, self.calls = model, after, 0

    def forward(self, x, targets=None):
        self.calls += 1
        loss = self.module(x, targets=targets)
        return loss * float("nan") if self.calls > self.after else loss


def test_nan_stops_and_keeps_the_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    _, tok, data = corpus
    build = T.build_model
    monkeypatch.setattr(T, "build_model", lambda cfg, t, device: NaNAfter(build(cfg, t, device), after=2 * 7))
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 8 .*last good checkpoint .*step-0000005 \(step 5\)"):
        train(CFG, tcfg(tmp_path), data, tok, progress=False, verbose=False)
    ck = Checkpoint(tmp_path)
    assert ck.step == 5 and (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-0000005"
    model, _, _ = load_model(tmp_path)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-0000005"]


def test_crash_mid_save_leaves_the_previous_checkpoint(corpus, tmp_path, monkeypatch):
    _, tok, data = corpus
    train(CFG, tcfg(tmp_path, max_steps=5), data, tok, progress=False, verbose=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints" / "step-0000005").iterdir()}
    ck = Checkpoint(tmp_path)
    model, _, _ = load_model(tmp_path)
    opt = T.make_optimizer(model, tcfg(tmp_path))
    real_save = torch.save

    def crash(obj, f, *a, **k):  # the process dies while writing the optimizer state
        real_save(obj, f, *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 9, model, opt, dict(ck.state), CFG, tcfg(tmp_path), tok)
    monkeypatch.setattr(torch, "save", real_save)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step-0000005"]  # no step-9, no temporary folder left behind
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints" / "step-0000005").iterdir()} == before
    assert Checkpoint(tmp_path).step == 5
    # a crash after the rename but before `latest` moved: latest still names the old one, which is complete
    (tmp_path / "checkpoints" / "latest").write_text("step-0000009\n")  # a pointer to a folder that never appeared
    assert find_checkpoint(tmp_path).name == "step-0000005"


def test_bad_inputs_fail_clearly_and_write_nothing(corpus, tmp_path):
    text, tok, data = corpus
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="seq_len=128 is longer than the model's max_seq_len=64"):
        train(CFG, tcfg(out, seq_len=128), data, tok, progress=False)
    with pytest.raises(ValueError, match="512-token vocabulary but the model has vocab_size=300"):
        train(LlamaConfig.from_name("debug", vocab_size=300), tcfg(out), data, tok, progress=False)
    assert not out.exists()
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty corpus"):
        tokenizer_for(str(empty), 512, tmp_path / "cache", verbose=False)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        tokenizer_for(str(tmp_path / "missing.txt"), 512, tmp_path / "cache", verbose=False)
    with pytest.raises(FileNotFoundError, match="no such checkpoint or run folder"):
        train(CFG, tcfg(out), data, tok, resume=True, progress=False)
    for bad, msg in [(dict(lr=0), "lr=0"), (dict(global_batch=0), "global_batch=0"),
                     (dict(dtype="fp8"), "dtype"), (dict(device="gpu"), "device"), (dict(betas=(0.9,)), "betas")]:
        with pytest.raises(ValueError, match=msg):
            tcfg(out, **bad)
    with pytest.raises(ValueError, match="unknown TrainConfig field 'lrr'"):
        TrainConfig.from_preset("toy", lrr=1)
    assert not out.exists()


def test_token_ids_beyond_the_model_are_refused(corpus, tmp_path):
    _, tok, data = corpus
    model = T.build_model(CFG, tcfg(tmp_path), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, vocab_size=512\)"):
        model(torch.tensor([[1, 2, 512]]), targets=torch.tensor([[1, 2, 3]]))


def test_corrupt_checkpoints_are_refused(corpus, tmp_path):
    _, tok, data = corpus
    train(CFG, tcfg(tmp_path, max_steps=5), data, tok, progress=False, verbose=False)
    ck = find_checkpoint(tmp_path)
    metrics_before = (tmp_path / "metrics.csv").read_text()
    weights = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match="corrupt: model.safetensors"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="corrupt: model.safetensors"):
        train(CFG, tcfg(tmp_path, max_steps=8), data, tok, resume=True, progress=False)
    assert (tmp_path / "metrics.csv").read_text() == metrics_before  # nothing rewritten
    (ck / "model.safetensors").write_bytes(weights)
    (ck / "optimizer.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="corrupt: optimizer.pt"):
        train(CFG, tcfg(tmp_path, max_steps=8), data, tok, resume=True, progress=False)
    (ck / "state.json").write_text("{broken")
    with pytest.raises(ValueError, match="corrupt: state.json is not valid JSON"):
        Checkpoint(tmp_path)
    (ck / "state.json").unlink()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Checkpoint(tmp_path)


def test_checkpoint_from_another_config_or_tokenizer(corpus, tmp_path):
    text, tok, data = corpus
    train(CFG, tcfg(tmp_path, max_steps=5), data, tok, progress=False, verbose=False)
    with pytest.raises(ValueError, match=r"different model \(n_layers: 2 → 3\)"):
        train(LlamaConfig.from_name("debug", n_layers=3), tcfg(tmp_path, max_steps=8), data, tok, resume=True, progress=False)
    other = tokenizer_for(str(text), 400, tmp_path / "other", verbose=False)
    other_data = prepare_data(str(text), other, tmp_path / "other", progress=False)
    with pytest.raises(ValueError, match="another tokenizer"):
        train(CFG, tcfg(tmp_path, max_steps=8), other_data, other, resume=True, progress=False)
    with pytest.raises(ValueError, match="not the one the data was tokenized with"):
        train(CFG, tcfg(tmp_path / "x"), data, other, progress=False)
    assert Checkpoint(tmp_path).step == 5


def test_schedule_and_weight_decay_groups():
    assert lr_at(0, 1.0, 0.1, 10, 100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 0.1, 10, 100) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 0.1, 10, 100) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 0.1, 10, 100) == pytest.approx(0.55)
    assert lr_at(100, 1.0, 0.1, 10, 100) == lr_at(10**6, 1.0, 0.1, 10, 100) == 0.1
    for tie in (False, True):
        model = T.build_model(LlamaConfig.from_name("debug", tie_embeddings=tie), TrainConfig(), torch.device("cpu"))
        decay, no_decay = param_groups(model, 0.1)
        names = {id(p): n for n, p in model.named_parameters()}
        assert all(p.ndim == 2 and "tok_embeddings" not in names[id(p)] for p in decay["params"])
        assert {names[id(p)] for p in no_decay["params"]} >= {"tok_embeddings.weight", "norm.weight"}
        assert ("output.weight" in {names[id(p)] for p in decay["params"]}) == (not tie)
        n = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
        assert n == model.num_params()


def cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "minillm", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


def test_cli_train_resume_generate(corpus, tmp_path, capsys):
    text, _, _ = corpus
    res = cli("train", "--preset", "debug", "--data", str(text), "--out", "run", "--max-steps", "6", "--time-limit", "0",
              "--no-progress", "--seq-len", "32", "--batch", "4", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    # statistics and progress go to standard error, the closing sample (text) alone to standard output
    assert "val bpb" in res.stderr and "sample (standard output)" in res.stderr and "done: 6 steps" in res.stderr
    assert res.stdout.strip() and "val bpb" not in res.stdout and "done:" not in res.stdout
    run = tmp_path / "run"
    rows = MetricsLog.read(run / "metrics.csv")
    assert {"step", "loss", "val_loss", "val_bpb", "lr", "tokens_per_s"} <= set(rows[0])
    assert rows[-1]["step"] == "6" and float(rows[-1]["val_bpb"]) > 0
    assert (run / "loss.png").stat().st_size > 1000 and Checkpoint(run).step == 6
    assert sorted(p.name for p in (run / "data").iterdir() if p.name.startswith("tokenizer-"))  # cached tokenizer
    res = cli("train", "--preset", "debug", "--data", str(text), "--out", "run", "--max-steps", "8", "--time-limit", "0",
              "--no-progress", "--seq-len", "32", "--batch", "4", "--resume", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "resuming from" in res.stderr and "training a" not in res.stderr and Checkpoint(run).step == 8
    from minillm.cli import main  # the same command in this process: twice, with one seed, the same text

    outs = []
    for _ in range(2):
        assert main(["generate", "--ckpt", str(run), "--prompt", "def ", "--max-new-tokens", "10", "--seed", "3"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0].startswith("def ") and outs[0] == outs[1]


def test_cli_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    from minillm.cli import main  # in this process: an uncaught error would fail the test with its traceback

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "nope.txt", "--out", "run"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no such file or folder: nope.txt" in err, err
    assert main(["generate", "--ckpt", "nowhere", "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no such checkpoint or run folder" in err, err
    assert not (tmp_path / "run").exists()


def test_a_pinned_vocabulary_refuses_another_tokenizer_in_one_line(corpus, tmp_path, monkeypatch, capsys):
    """tinyllama-1.1b's 32,000 ids are Llama 2's tokenizer: a tokenizer of another size is refused before anything is
    written, naming both sizes and what would do; --tokenizer names a tokenizer, a run or checkpoint folder."""
    from minillm.cli import main

    _, tok, _ = corpus
    monkeypatch.chdir(tmp_path)
    tok.save("tok.bpe.json")
    assert main(["train", "--preset", "tinyllama-1.1b", "--tokenizer", "tok.bpe.json", "--out", "run"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert (f"the tokenizer has {tok.vocab_size} ids but the tinyllama-1.1b preset pins vocab_size=32000" in err
            and "give a tokenizer of 32000 ids, or a preset whose vocabulary follows the tokenizer (toy, debug)" in err)
    assert not (tmp_path / "run").exists()
    Path("empty").mkdir()
    assert main(["train", "--preset", "debug", "--tokenizer", "empty", "--out", "run"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no tokenizer in 'empty'" in err and "run or checkpoint folder" in err
    assert not (tmp_path / "run").exists()
