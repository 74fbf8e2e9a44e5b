"""Merging and averaging weights (nbs/20_merge.ipynb): the methods against hand computations and SciPy, the moving
average's arithmetic, `minillm merge` end to end (transformers parity, the other commands accept its output) and its
one-line errors."""
import contextlib
import importlib.util
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation, Slerp
from torch import nn

from minillm import check
from minillm.cli import main
from minillm.config import LlamaConfig, TrainConfig
from minillm.hf import save_hf
from minillm.merge import EMA, last_checkpoints, linear_merge, slerp, slerp_merge, task_arithmetic
from minillm.model import Llama
from minillm.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def weights_of(path):
    "Every parameter of the model that `minillm.checkpoint.load_weights` reads from `path`."
    from minillm.checkpoint import load_weights

    return load_weights(path)[0].state_dict()


# ---- the methods, against hand computations ----

def test_linear_merge_by_hand():
    a, b = {"w": torch.tensor([0.0, 4.0]), "n": torch.tensor(3)}, {"w": torch.tensor([4.0, 0.0]), "n": torch.tensor(5)}
    assert torch.equal(linear_merge([a, b])["w"], torch.tensor([2.0, 2.0]))
    assert torch.equal(linear_merge([a, b], [1, 3])["w"], torch.tensor([3.0, 1.0]))  # normalized: ¼·a + ¾·b
    assert torch.equal(linear_merge([a, b], [1, 3], normalize=False)["w"], torch.tensor([12.0, 4.0]))
    assert linear_merge([a, b])["n"].item() == 3  # integer tensors are not averaged: the first model's
    with pytest.raises(ValueError, match="3 weights for 2 models"):
        linear_merge([a, b], [1, 2, 3])
    with pytest.raises(ValueError, match="positive sum"):
        linear_merge([a, b], [1, -1])


def test_linear_merge_of_copies_is_the_model_bit_for_bit():
    sd = Llama(LlamaConfig.from_name("debug")).state_dict()
    for n in (2, 3, 5):
        merged = linear_merge([sd] * n, [0.1 * (i + 1) for i in range(n)])
        assert all(torch.equal(merged[k], v) for k, v in sd.items())
    bf16 = {k: v.bfloat16() for k, v in sd.items()}
    merged = linear_merge([bf16, bf16, bf16])
    assert all(merged[k].dtype == torch.bfloat16 and torch.equal(merged[k], v) for k, v in bf16.items())


def test_slerp_by_hand():
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # 90° apart: the point at t lies at angle t·90° on the unit circle
    for t in (0.0, 1 / 3, 0.5, 0.9, 1.0):
        want = torch.tensor([math.cos(t * math.pi / 2), math.sin(t * math.pi / 2)])
        assert torch.allclose(slerp(e0, e1, t), want, atol=1e-7), t
    # ends of different norms: mergekit's coefficients sin((1−t)Ω)/sin Ω, sin(tΩ)/sin Ω multiply the original tensors
    assert torch.allclose(slerp(2 * e0, e1, 0.5), torch.tensor([2 * math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-7)
    # nearly parallel and opposite tensors fall back to the linear blend
    v = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    assert torch.allclose(slerp(v, 2 * v, 0.25), 1.25 * v)
    assert torch.allclose(slerp(v, -v, 0.5), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="one shape"):
        slerp(v, e0, 0.5)


def test_slerp_matches_scipys_quaternion_slerp():
    gen = torch.Generator().manual_seed(3)
    for _ in range(10):
        q0, q1 = torch.nn.functional.normalize(torch.randn(2, 4, generator=gen, dtype=torch.float64), dim=-1)
        q1 = q1 if q0 @ q1 > 0 else -q1  # SciPy takes the shorter way round
        ts = [0.05, 0.4, 0.75]
        ref = torch.from_numpy(Slerp([0, 1], Rotation.from_quat(np.stack([q0.numpy(), q1.numpy()])))(ts).as_quat())
        ours = torch.stack([slerp(q0, q1, t) for t in ts])
        signs = torch.sign(ours[:, -1:]) * torch.sign(ref[:, -1:])  # q and −q are one rotation
        assert torch.allclose(ours, ref * signs, atol=1e-7)


def test_slerp_merge_ends_and_bad_t():
    torch.manual_seed(1)
    a = Llama(LlamaConfig.from_name("debug")).state_dict()
    torch.manual_seed(2)
    b = Llama(LlamaConfig.from_name("debug")).state_dict()
    assert all(torch.equal(v, a[k]) for k, v in slerp_merge(a, b, 0.0).items())
    assert all(torch.equal(v, b[k]) for k, v in slerp_merge(a, b, 1.0).items())
    with pytest.raises(ValueError, match="between 0"):
        slerp_merge(a, b, 1.5)


def test_task_arithmetic_by_hand():
    base = {"w": torch.tensor([1.0, 1.0])}
    ft1, ft2 = {"w": torch.tensor([3.0, 0.0])}, {"w": torch.tensor([1.0, 5.0])}
    assert torch.equal(task_arithmetic(base, [ft1], [0.5])["w"], torch.tensor([2.0, 0.5]))
    assert torch.equal(task_arithmetic(base, [ft1, ft2])["w"], torch.tensor([3.0, 4.0]))  # λ = 1 each
    assert torch.equal(task_arithmetic(base, [ft1, ft2], [1.0, -0.25])["w"], torch.tensor([3.0, -1.0]))
    torch.manual_seed(1)
    a = Llama(LlamaConfig.from_name("debug")).state_dict()
    torch.manual_seed(2)
    b = Llama(LlamaConfig.from_name("debug")).state_dict()
    assert all(torch.equal(v, b[k]) for k, v in task_arithmetic(a, [b], [1.0]).items())  # λ=1: the fine-tune
    with pytest.raises(ValueError, match="1 weights for 2 fine-tunes"):
        task_arithmetic(base, [ft1, ft2], [1.0])


def test_mismatched_state_dicts_are_one_line():
    a = Llama(LlamaConfig.from_name("debug")).state_dict()
    wide = Llama(LlamaConfig.from_name("debug", ffn_dim=192)).state_dict()
    with pytest.raises(ValueError, match=r"differ in shape: layers.0.feed_forward.w1.weight is \(192, 64\)"):
        linear_merge([a, wide])
    deeper = Llama(LlamaConfig.from_name("debug", n_layers=3)).state_dict()
    with pytest.raises(ValueError, match="hold different tensors"):
        task_arithmetic(a, [deeper])


# ---- the moving average ----

def test_ema_update_is_the_unrolled_sum():
    decay, values = 0.8, [2.0, -1.0, 3.0, 0.5, 4.0]
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(values[0]), model.bias.fill_(-values[0])
    ema = EMA(model, decay)
    for v in values[1:]:
        with torch.no_grad():
            model.weight.fill_(v), model.bias.fill_(-v)
        ema.update(model)
    n = len(values) - 1
    want = decay ** n * values[0] + sum((1 - decay) * decay ** (n - k) * values[k] for k in range(1, n + 1))
    assert torch.allclose(ema.state_dict()["weight"], torch.full((2, 3), want))
    assert torch.allclose(ema.state_dict()["bias"], torch.full((2,), -want))


def test_ema_swap_keeps_both_exact_in_bfloat16():
    "The average stays float32 while a bfloat16 model holds it, and the model's own weights come back bit for bit."
    model = nn.Linear(4, 4, bias=False).to(torch.bfloat16)
    own = model.weight.detach().clone()
    ema = EMA(model, 0.9)
    ema.shadow[0].fill_(1.0 + 2 ** -12)  # not a bfloat16 number
    ema.swap(model)
    assert torch.equal(model.weight, torch.full((4, 4), 1.0, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="swap back first"):
        ema.update(model)
    ema.swap(model)
    assert torch.equal(model.weight, own)
    assert torch.equal(ema.state_dict()["weight"], torch.full((4, 4), 1.0 + 2 ** -12))
    other = EMA(nn.Linear(4, 4, bias=False), 0.5)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.shadow[0], ema.shadow[0])
    with pytest.raises(ValueError, match="between 0 and 1"):
        EMA(model, 1.0)


# ---- folders and the command line ----

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    "Hugging Face folders of debug-size models sharing a tokenizer, one of another shape, one with another tokenizer."
    from minillm.corpora import builtin_corpus

    root = tmp_path_factory.mktemp("models")
    texts = [d.text for d in builtin_corpus(max_bytes=30_000)]
    tok, other_tok = Tokenizer.train(texts, 300), Tokenizer.train(texts[::-1][:3], 280)
    cfg = LlamaConfig.from_name("debug")
    for name, seed, c, t in (("a", 1, cfg, tok), ("b", 2, cfg, tok), ("c", 3, cfg, tok),
                             ("wide", 4, LlamaConfig.from_name("debug", ffn_dim=192), tok),
                             ("other-tok", 5, cfg, other_tok)):
        torch.manual_seed(seed)
        save_hf(Llama(c), root / name, tokenizer=t)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    "A debug-preset run that kept its last three checkpoints (steps 4, 6, 8)."
    from minillm.train import train_run

    out = tmp_path_factory.mktemp("run")
    tcfg = TrainConfig.from_preset("debug", out_dir=str(out), data=("builtin?max_bytes=60000",), tokenizer_bytes=60_000,
                                   max_steps=8, eval_every=0, save_every=2, keep_checkpoints=3, sample_tokens=0,
                                   time_limit=None)
    torch.manual_seed(0)
    train_run(LlamaConfig.from_name("debug"), tcfg, progress=False, verbose=False)
    return out


def test_merged_folder_loads_in_transformers_with_minillms_logits(models, tmp_path):
    from transformers import LlamaForCausalLM

    from minillm.checkpoint import load_weights

    code, out, err = run_cli("merge", models / "a", models / "b", "--out", tmp_path / "m", "--weights", "1", "3")
    assert code == 0, err
    assert str(tmp_path / "m") in out and "linear" in out
    record = json.loads((tmp_path / "m" / "merge.json").read_text())
    assert record["method"] == "linear"
    assert [(m["path"], m["weight"]) for m in record["models"]] == [(str(models / "a"), 0.25), (str(models / "b"), 0.75)]
    a, b, merged = weights_of(models / "a"), weights_of(models / "b"), weights_of(tmp_path / "m")
    for k in a:
        assert torch.allclose(merged[k], 0.25 * a[k] + 0.75 * b[k], atol=1e-7), k
    model, tok, _ = load_weights(tmp_path / "m")
    assert tok.fingerprint == Tokenizer.load(models / "a").fingerprint
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "m", torch_dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode("def average(xs):\n    return sum(xs)", bos=True)])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, model(ids), atol=1e-5)


def test_every_command_accepts_a_merged_folder(models, tmp_path):
    assert run_cli("merge", models / "a", models / "b", models / "c", "--out", tmp_path / "m")[0] == 0
    code, text, err = run_cli("generate", "--ckpt", tmp_path / "m", "--prompt", "def ", "--max-new-tokens", "5",
                              "--temperature", "0")
    assert code == 0 and text.startswith("def "), err
    (tmp_path / "t.txt").write_text("Averaged weights are weights like any other.\n" * 10)
    code, _, err = run_cli("eval", "--ckpt", tmp_path / "m", "--data", tmp_path / "t.txt", "--json", tmp_path / "e.json")
    assert code == 0 and json.loads((tmp_path / "e.json").read_text())["bpb"] > 0, err
    assert run_cli("quantize", "--ckpt", tmp_path / "m", "--out", tmp_path / "q", "--bits", "8")[0] == 0
    assert run_cli("export", "--ckpt", tmp_path / "m", "--out", tmp_path / "m.gguf", "--format", "gguf")[0] == 0
    # a merged folder is itself an input to merge (a soup of soups)
    assert run_cli("merge", tmp_path / "m", models / "a", "--out", tmp_path / "m2", "--method", "slerp")[0] == 0


def test_slerp_and_task_on_the_command_line(models, tmp_path):
    a, b = weights_of(models / "a"), weights_of(models / "b")
    assert run_cli("merge", models / "a", models / "b", "--out", tmp_path / "s", "--method", "slerp",
                   "--weights", "1", "3")[0] == 0
    assert json.loads((tmp_path / "s" / "merge.json").read_text())["t"] == 0.75
    merged, name = weights_of(tmp_path / "s"), "layers.1.attention.wo.weight"
    x, y = a[name].double().flatten(), b[name].double().flatten()
    omega = torch.arccos(x @ y / (x.norm() * y.norm()))  # the textbook formula, computed here by hand
    want = (torch.sin(0.25 * omega) * x + torch.sin(0.75 * omega) * y) / torch.sin(omega)
    assert torch.allclose(merged[name].double().flatten(), want, atol=1e-6)
    # task arithmetic with λ=1 of one fine-tune is that fine-tune
    assert run_cli("merge", models / "b", "--method", "task", "--base", models / "a", "--out", tmp_path / "t")[0] == 0
    assert all(torch.allclose(v, b[k], atol=1e-6) for k, v in weights_of(tmp_path / "t").items())
    record = json.loads((tmp_path / "t" / "merge.json").read_text())
    assert record["base"]["path"] == str(models / "a") and record["models"][0]["weight"] == 1.0


def test_last_k_checkpoints_of_a_run(run, tmp_path):
    steps = [p.name for p in last_checkpoints(run, 2)]
    assert steps == ["step-0000006", "step-0000008"]
    with pytest.raises(ValueError, match=r"holds 3 checkpoint\(s\) \(step 4, 6, 8\), not 5: give --last 3 or fewer"):
        last_checkpoints(run, 5)
    assert run_cli("merge", run, "--last", "3", "--out", tmp_path / "avg")[0] == 0
    ckpts = [weights_of(run / "checkpoints" / f"step-{s:07d}") for s in (4, 6, 8)]
    for k, v in weights_of(tmp_path / "avg").items():
        assert torch.allclose(v, (ckpts[0][k] + ckpts[1][k] + ckpts[2][k]) / 3, atol=1e-6), k
    record = json.loads((tmp_path / "avg" / "merge.json").read_text())
    assert record["last"] == 3 and [m["weight"] for m in record["models"]] == pytest.approx([1 / 3] * 3)


def test_bad_merges_are_one_line(models, run, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("something")
    a, b = models / "a", models / "b"
    out = ["--out", tmp_path / "x"]
    cases = [([a, models / "wide", *out], "differ in shape (ffn_dim 192 vs 176)"),
             ([a, models / "other-tok", *out], "uses another tokenizer"),
             ([a, b, *out, "--weights", "1", "2", "3"], "3 weights for 2 models: give one weight per model"),
             ([a, b, *out, "--method", "task"], "give the base with --base DIR"),
             ([a, b, models / "c", *out, "--method", "slerp"], "two models, got 3"),
             ([a, b, *out, "--base", a], "--method linear does not use it"),
             ([a, *out], "two or more models"),
             ([a, b, "--out", tmp_path / "taken"], "already exists; pass --force"),
             ([a, b, "--out", tmp_path / "taken", "--force"], "holds files that are not a merged model (e.g. x)"),
             ([a, b, "--out", a, "--force"], "is a model being merged"),
             ([a, tmp_path / "nowhere", *out], "nowhere"),
             ([a, b, *out, "--last", "2"], "give one run folder"),
             ([run, *out, "--last", "4"], "give --last 3 or fewer")]
    for argv, message in cases:
        code, stdout, err = run_cli("merge", *argv)
        assert code == 2 and err.startswith("minillm merge: error: ") and message in err, (argv, err)
        assert err.count("\n") == 1, err
    assert not (tmp_path / "x").exists() and (tmp_path / "taken" / "x").read_text() == "something"
    assert run_cli("merge", a, b, "--out", tmp_path / "m")[0] == 0
    assert run_cli("merge", a, b, "--out", tmp_path / "m", "--method", "slerp", "--force")[0] == 0  # an earlier merge
    assert json.loads((tmp_path / "m" / "merge.json").read_text())["method"] == "slerp"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


# ---- the exercise checks ----

def solutions():
    spec = importlib.util.spec_from_file_location("solutions_20_merge", ROOT / "solutions" / "20_merge.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exercise_checks_pass_solutions_and_fail_wrong_answers(capsys):
    sol = solutions()
    for name in ("slerp_tensor", "task_vector_merge", "ema_average"):
        getattr(check, name)(getattr(sol, name))
        assert capsys.readouterr().out.startswith(f"check.{name}: passed (")
    wrong = {"slerp_tensor": lambda v0, v1, t: (1 - t) * v0 + t * v1,  # the chord, not the arc
             "task_vector_merge": lambda base, fts, lam: {k: v + sum(l * f[k] for l, f in zip(lam, fts))
                                                          for k, v in base.items()},  # adds weights, not differences
             "ema_average": lambda ws, d: d * ws[0] + (1 - d) * ws[-1]}  # only the last step
    for name, fn in wrong.items():
        with pytest.raises(AssertionError, match=f"check.{name}: on "):
            getattr(check, name)(fn)
