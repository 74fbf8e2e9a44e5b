"""Runs that start from other weights (`--init`), learn from a teacher (`--teacher`) and keep a moving average of
their weights (`--ema`), on one process and under FSDP on two."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from minillm.checkpoint import Checkpoint, load_model
from minillm.cli import main
from minillm.config import LlamaConfig, TrainConfig
from minillm.corpora import builtin_corpus
from minillm.hf import load_hf, save_hf, state_dict_from_hf
from minillm.metrics import MetricsLog
from minillm.model import Llama
from minillm.tokenizer import Tokenizer
from minillm.train import prepare_data, tokenizer_for, train

ROOT = Path(__file__).resolve().parent.parent
CFG = LlamaConfig.from_name("debug")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    "A text file of the built-in corpus, its tokenizer and token shards."
    d = tmp_path_factory.mktemp("corpus")
    text = d / "text.txt"
    text.write_text("\n\n".join(doc.text for doc in builtin_corpus(max_bytes=150_000)))
    tok = tokenizer_for(str(text), CFG.vocab_size, d / "cache", verbose=False)
    return text, tok, prepare_data(str(text), tok, d / "cache", progress=False)


def tcfg(out, **kw):
    base = dict(out_dir=str(out), data=("unused",), lr=3e-3, min_lr=3e-4, warmup=2, max_steps=8, global_batch=8,
                micro_batch=4, seq_len=32, eval_every=100, eval_batches=2, save_every=0, log_every=1, sample_tokens=0,
                device="cpu")
    return TrainConfig(**{**base, **kw})


def run(corpus, out, **kw):
    _, tok, data = corpus
    return train(CFG, tcfg(out, **kw), data, tok, progress=False, verbose=False)


@pytest.fixture(scope="module")
def teacher(corpus, tmp_path_factory):
    "A debug model trained for 12 steps: the weights later runs start from and learn from."
    out = tmp_path_factory.mktemp("teacher") / "run"
    return out, run(corpus, out, max_steps=12, seed=1)


def step0_val_loss(out):
    return float(next(r for r in MetricsLog.read(Path(out) / "metrics.csv") if r["step"] == "0")["val_loss"])


def test_init_starts_from_the_weights_of_a_run_or_a_hugging_face_folder(corpus, teacher, tmp_path):
    """--init: the run's first evaluation is the evaluation the weights got at the end of their own run, from a run
    folder and from the same weights written as a Hugging Face directory."""
    t_dir, t_res = teacher
    run(corpus, tmp_path / "a", init=str(t_dir), max_steps=1)
    assert step0_val_loss(tmp_path / "a") == pytest.approx(t_res.val_loss, rel=1e-6)
    model, tok, _ = load_model(t_dir)
    save_hf(model, tmp_path / "hf", tokenizer=tok)
    run(corpus, tmp_path / "b", init=str(tmp_path / "hf"), max_steps=1)
    assert step0_val_loss(tmp_path / "b") == pytest.approx(t_res.val_loss, rel=1e-6)
    run(corpus, tmp_path / "c", max_steps=1, seed=1)  # and not where a fresh model starts
    assert step0_val_loss(tmp_path / "c") > t_res.val_loss + 0.3


def test_init_refuses_weights_of_another_shape_in_one_line(corpus, teacher, tmp_path):
    _, tok, data = corpus
    small = LlamaConfig.from_name("debug", dim=32, ffn_dim=96)
    with pytest.raises(ValueError, match=r"another shape than the run's \(dim: 64 → 32, ffn_dim: 176 → 96\)"):
        train(small, tcfg(tmp_path / "r", init=str(teacher[0])), data, tok, progress=False, verbose=False)
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_cli_init_takes_the_shape_and_tokenizer_of_the_weights(corpus, teacher, tmp_path, capsys):
    text, tok, _ = corpus
    code = main(["train", "--preset", "toy", "--init", str(teacher[0]), "--data", str(text), "--out", str(tmp_path / "r"),
                 "--max-steps", "1", "--time-limit", "0", "--seq-len", "32", "--batch", "8", "--no-progress",
                 "--device", "cpu"])
    out = capsys.readouterr().err  # what the run says goes to standard error
    assert code == 0 and "minillm train: debug model (158,016 parameters)" in out
    assert "starting from the weights of" in out and "step-0000012 (step 12)" in out
    assert Checkpoint(tmp_path / "r").tokenizer().fingerprint == tok.fingerprint
    assert main(["train", "--init", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minillm train: error: no such") and "nothing" in err


def kl_to_teacher(student_dir, teacher_dir, corpus):
    "Mean KL(teacher ‖ student) per token on four windows of the corpus text."
    s, _, _ = load_model(student_dir)
    t, _, _ = load_model(teacher_dir)
    text, tok, _ = corpus
    x = torch.tensor(tok.encode(text.read_text()[-4000:])[:128]).view(4, 32)
    with torch.no_grad():
        lt, ls = F.log_softmax(t(x), -1), F.log_softmax(s(x), -1)
    return (lt.exp() * (lt - ls)).sum(-1).mean().item()


def test_distillation_is_cross_entropy_at_alpha_zero_and_pulls_toward_the_teacher(corpus, teacher, tmp_path):
    t_dir, _ = teacher
    plain = run(corpus, tmp_path / "plain")
    zero = run(corpus, tmp_path / "zero", teacher=str(t_dir), distill_alpha=0.0)
    assert zero.val_loss == pytest.approx(plain.val_loss, rel=1e-5)  # the same run through the teacher's path
    run(corpus, tmp_path / "kl", teacher=str(t_dir), distill_alpha=1.0, distill_temperature=1.0)
    assert kl_to_teacher(tmp_path / "kl", t_dir, corpus) < 0.8 * kl_to_teacher(tmp_path / "plain", t_dir, corpus)
    # the teacher learned nothing
    before = load_file(str(Checkpoint(t_dir).path / "model.safetensors"))
    model, _, _ = load_model(t_dir)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)


def test_a_teacher_with_another_tokenizer_is_refused(corpus, teacher, tmp_path, capsys):
    text, _, _ = corpus
    other = Tokenizer.train([text.read_text()[:60_000]], vocab_size=300)
    model, _, _ = load_model(teacher[0])
    save_hf(model, tmp_path / "other", tokenizer=other)
    code = main(["train", "--preset", "debug", "--data", str(text), "--teacher", str(tmp_path / "other"),
                 "--out", str(tmp_path / "r"), "--max-steps", "1", "--no-progress", "--device", "cpu",
                 "--tokenizer", str(Checkpoint(teacher[0]).path)])
    err = capsys.readouterr().err
    assert code == 2 and "uses another tokenizer" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--preset", "debug", "--distill-alpha", "1.5", "--out", str(tmp_path / "r")]) == 2
    assert "distill_alpha=1.5 must be in [0, 1]" in capsys.readouterr().err


def test_ema_is_the_moving_average_of_the_saved_weights_evaluated_saved_and_resumed(corpus, tmp_path):
    """Every step saved (and kept): the `ema/` folder of the last one equals the average computed by hand from the
    initial weights (`torch.manual_seed(seed); Llama(cfg)`) and each step's weights; a resumed run ends with the same
    average; the folder loads in transformers with minillm's logits."""
    d = 0.7
    res = run(corpus, tmp_path / "a", ema=d, save_every=1, keep_checkpoints=20, max_steps=6)
    torch.manual_seed(0)
    avg = {k: v.detach().clone() for k, v in Llama(CFG).state_dict().items()}
    for step in range(1, 7):
        w = load_file(str(tmp_path / "a" / "checkpoints" / f"step-{step:07d}" / "model.safetensors"))
        avg = {k: d * avg[k] + (1 - d) * w[k] for k in avg}
    ema_dir = tmp_path / "a" / "checkpoints" / "step-0000006" / "ema"
    saved = state_dict_from_hf(load_file(str(ema_dir / "model.safetensors")))
    assert set(saved) == set(avg) and all(torch.allclose(saved[k], avg[k], atol=1e-6) for k in avg)
    rows = [r for r in MetricsLog.read(tmp_path / "a" / "metrics.csv") if r["ema_val_bpb"]]
    assert [r["step"] for r in rows] == ["0", "6"] and float(rows[-1]["ema_val_bpb"]) == pytest.approx(res.ema_val_bpb, abs=1e-6)
    assert res.ema_val_bpb != pytest.approx(res.val_bpb)

    train(CFG, tcfg(tmp_path / "b", ema=d, save_every=3, keep_checkpoints=2, max_steps=6), corpus[2], corpus[1],
          stop_at=3, progress=False, verbose=False)
    resumed = train(CFG, tcfg(tmp_path / "b", ema=d, save_every=3, keep_checkpoints=2, max_steps=6), corpus[2], corpus[1],
                    resume=True, progress=False, verbose=False)
    assert resumed.ema_val_bpb == pytest.approx(res.ema_val_bpb, abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").glob("step-*")) == ["step-0000003", "step-0000006"]

    from minillm.export import load_for_export  # every command reads the folder: a model and its tokenizer

    model, tok, _ = load_for_export(ema_dir)
    assert tok.fingerprint == corpus[1].fingerprint
    assert all(torch.equal(p, avg[n].to(p.dtype)) or torch.allclose(p, avg[n], atol=1e-6)
               for n, p in model.state_dict().items())


def test_fsdp_runs_with_init_teacher_and_ema_like_one_process(corpus, teacher, tmp_path):
    """Two processes under FSDP with --init, --teacher and --ema: the loss line says what computes the loss, and the
    saved average is the one a single process computes for the same run."""
    text, _, _ = corpus
    args = ["train", "--preset", "debug", "--data", str(text), "--init", str(teacher[0]), "--teacher", str(teacher[0]),
            "--ema", "0.8", "--max-steps", "3", "--time-limit", "0", "--eval-every", "0", "--no-progress",
            "--batch", "8", "--micro-batch", "4", "--seq-len", "32", "--lr", "1e-3"]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                          "minillm", *args, "--out", "fsdp"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=420)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "loss=torch(distill)" in res.stderr and "the fused loss kernel is not used" in res.stderr
    assert "2 processes" in res.stderr and Checkpoint(tmp_path / "fsdp").sharded
    assert main([*args, "--out", str(tmp_path / "one"), "--device", "cpu"]) == 0
    a = load_hf(Checkpoint(tmp_path / "fsdp").path / "ema").state_dict()
    b = load_hf(Checkpoint(tmp_path / "one").path / "ema").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=2e-5) for k in a)
    start = load_hf(Checkpoint(tmp_path / "one").path / "ema")  # and it moved away from the starting weights
    t, _, _ = load_model(teacher[0])
    assert not torch.allclose(start.layers[0].attention.wq.weight, t.layers[0].attention.wq.weight)
