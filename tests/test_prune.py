"""Structured pruning (chapter 19): importance against a layer-by-layer hand computation, slicing that is exact where
the answer is known, grouped-query consistency, the planner, the `minillm prune` command and its output in
transformers, eval, export and `train --init`, and the chapter's exercise checks."""
import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from minillm import check
from minillm.cli import main
from minillm.config import LlamaConfig
from minillm.hf import load_hf, save_hf
from minillm.model import Llama
from minillm.prune import (estimate_importance, keep_indices, plan_shape, prune, pruned_config, slice_model,
                           target_shape)
from minillm.rope import apply_rope

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Llama(LlamaConfig.from_name("debug", init_std=0.05)).eval()


@pytest.fixture(scope="module")
def calibration():
    return torch.randint(0, 512, (6, 32), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def imp(model, calibration):
    return estimate_importance(model, calibration, batch_size=4)


@torch.no_grad()
def by_hand(model, tokens):
    "Every score from plain arithmetic: torch's F.rms_norm and SDPA, layer by layer, no hooks."
    cfg, (B, T) = model.cfg, tokens.shape
    cos, sin = model.rope_cos[:T], model.rope_sin[:T]
    agg = lambda a: a.abs().mean(dim=1).norm(dim=0)
    rms = lambda x, norm: F.rms_norm(x, (cfg.dim,), norm.weight, cfg.norm_eps)
    h, ffn, heads, bi, normed = model.tok_embeddings(tokens), [], [], [], []
    for layer in model.layers:
        att, ff, x_in = layer.attention, layer.feed_forward, h
        a = rms(h, layer.attention_norm)
        q = apply_rope(att.wq(a).view(B, T, cfg.n_heads, cfg.head_dim), cos, sin).transpose(1, 2)
        k = apply_rope(att.wk(a).view(B, T, cfg.n_kv_heads, cfg.head_dim), cos, sin).transpose(1, 2)
        v = att.wv(a).view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2).flatten(2)
        heads.append(agg(o).view(cfg.n_heads, cfg.head_dim).norm(dim=-1))
        h = h + att.wo(o)
        m = rms(h, layer.ffn_norm)
        act = F.silu(ff.w1(m)) * ff.w3(m)
        ffn.append(agg(act))
        h = h + ff.w2(act)
        cosine = (x_in * h).sum(-1) / (x_in.norm(dim=-1) * h.norm(dim=-1))
        bi.append(1 - cosine.mean())
        normed += [a, m]
    normed.append(rms(h, model.norm))
    return dict(ffn=torch.stack(ffn), heads=torch.stack(heads), channels=torch.stack([agg(n) for n in normed]).norm(dim=0),
                blocks=torch.stack(bi))


def test_importance_matches_the_hand_computation(model, calibration, imp):
    want = by_hand(model, calibration)
    for name, w in want.items():
        torch.testing.assert_close(getattr(imp, name), w, rtol=1e-4, atol=1e-5, msg=name)
    # a group's score is the L2 norm over all its query heads' channels = the root sum of its heads' squared scores
    groups = want["heads"].view(2, 2, 2).pow(2).sum(-1).sqrt()
    torch.testing.assert_close(imp.groups, groups, rtol=1e-4, atol=1e-5)
    assert not model.training and all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_importance_does_not_depend_on_the_batch_size(model, calibration, imp):
    other = estimate_importance(model, calibration, batch_size=1)
    for name in ("ffn", "heads", "groups", "channels", "blocks"):
        torch.testing.assert_close(getattr(other, name), getattr(imp, name), rtol=1e-4, atol=1e-6)


def test_pruning_nothing_is_exact(model, imp):
    x = torch.randint(0, 512, (2, 20))
    small = slice_model(model, keep_indices(imp, target_shape(model.cfg)))
    assert small.cfg.to_dict() == {**model.cfg.to_dict(), "name": "debug-pruned"}
    with torch.no_grad():
        assert torch.equal(small(x), model(x))


def test_tied_embeddings_stay_tied(calibration):
    torch.manual_seed(2)
    tied = Llama(LlamaConfig.from_name("debug", tie_embeddings=True, init_std=0.05)).eval()
    small, kept = prune(tied, calibration, dim=48)
    assert small.cfg.tie_embeddings and small.output.weight is small.tok_embeddings.weight
    assert torch.equal(small.tok_embeddings.weight, tied.tok_embeddings.weight[:, kept["channels"]])
    assert small.num_params() == small.cfg.n_params


def test_removing_silent_pieces_changes_nothing(model, calibration):
    silent = Llama(model.cfg).eval()
    silent.load_state_dict(model.state_dict())
    hd = model.cfg.head_dim
    with torch.no_grad():
        silent.layers[0].feed_forward.w2.weight[:, 10:60] = 0
        silent.layers[0].attention.wo.weight[:, 0:hd] = 0  # query head 0 of group 0
        silent.layers[0].attention.wo.weight[:, 3 * hd:4 * hd] = 0  # query head 3 of group 1
        silent.layers[1].attention.wo.weight.zero_()
        silent.layers[1].feed_forward.w2.weight.zero_()  # block 1: the identity
    imp = estimate_importance(silent, calibration)
    assert imp.blocks[1].item() == 0.0 and imp.blocks[0] > 0
    keep = keep_indices(imp, target_shape(silent.cfg, n_layers=1))
    assert keep["layers"] == [0]  # Block Influence drops the identity block
    keep.update(ffn=[[i for i in range(176) if not 10 <= i < 60]], heads=[[1, 2]])
    small = slice_model(silent, keep)
    assert (small.cfg.n_layers, small.cfg.n_heads, small.cfg.n_kv_heads, small.cfg.ffn_dim) == (1, 2, 2, 126)
    x = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(small(x), silent(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,heads,kv", [
    (dict(n_heads=2), 2, 2), (dict(n_kv_heads=1), 2, 1), (dict(n_heads=1), 1, 1), (dict(n_heads=2, n_kv_heads=1), 2, 1),
    (dict(n_heads=4, n_kv_heads=2), 4, 2)])
def test_heads_are_pruned_in_whole_groups(imp, shape, heads, kv):
    cfg = LlamaConfig.from_name("debug")
    full = target_shape(cfg, **shape)
    assert (full["n_heads"], full["n_kv_heads"]) == (heads, kv)
    keep = keep_indices(imp, full)
    for layer, groups, q in zip(keep["layers"], keep["kv_heads"], keep["heads"]):
        assert groups == sorted(imp.groups[layer].argsort(descending=True)[:kv].tolist())  # the strongest groups
        per_group = [[h for h in q if h // cfg.n_rep == g] for g in groups]
        assert sorted(h for hs in per_group for h in hs) == q and all(len(hs) == heads // kv for hs in per_group)
        for g, hs in zip(groups, per_group):  # each group keeps its own strongest query heads
            ranked = imp.heads[layer][g * cfg.n_rep:(g + 1) * cfg.n_rep].argsort(descending=True)
            assert sorted(hs) == sorted((ranked[:heads // kv] + g * cfg.n_rep).tolist())


@pytest.mark.parametrize("shape,message", [
    (dict(n_heads=3), "n_heads=3 cannot be kept in whole grouped-query groups .* valid n_heads are 1, 2, 4"),
    (dict(n_heads=3, n_kv_heads=2), "n_heads=3 is not a multiple of n_kv_heads=2.*valid n_heads with n_kv_heads=2: 2, 4"),
    (dict(n_heads=4, n_kv_heads=1), "4 query heads, more than the model's 2"),
    (dict(dim=65), "dim=65 must be an integer from 1 to the model's dim=64"),
    (dict(ffn_dim=0), "ffn_dim=0 must be an integer from 1"),
    (dict(n_layers=2.5), "n_layers=2.5 must be an integer"),
    (dict(vocab_size=100), "cannot prune 'vocab_size'")])
def test_bad_shapes_are_one_line_errors(shape, message):
    with pytest.raises(ValueError, match=message):
        target_shape(LlamaConfig.from_name("debug"), **shape)


@pytest.mark.parametrize("name", ["toy", "tinyllama-1.1b"])
def test_plan_shape_lands_near_the_target(name):
    cfg = LlamaConfig.from_name(name)
    for fraction in (0.5, 0.75, 0.9):
        shape = plan_shape(cfg, fraction)
        assert (shape["n_layers"], shape["n_heads"], shape["n_kv_heads"]) == (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads)
        assert shape["dim"] % 8 == 0 and shape["ffn_dim"] % 8 == 0
        assert pruned_config(cfg, shape).n_params == pytest.approx(fraction * cfg.n_params, rel=0.03)
    depth = plan_shape(cfg, 0.5, ("n_layers",))
    assert depth["n_layers"] < cfg.n_layers and depth["dim"] == cfg.dim
    for bad in (0, 1, 1.5, -0.2, True):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            plan_shape(cfg, bad)


def test_head_dim_wider_than_dim_over_heads_matches_transformers(model, calibration, tmp_path):
    from transformers import LlamaForCausalLM

    from minillm.export import load_gguf, save_gguf
    from minillm.tokenizer import Tokenizer

    small, kept = prune(model, calibration, dim=40, n_heads=2, n_kv_heads=1, ffn_dim=96)
    cfg = small.cfg
    assert (cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim) == (40, 2, 1, 16, 96)
    assert kept["shape"] == dict(n_layers=2, dim=40, n_heads=2, n_kv_heads=1, ffn_dim=96)
    save_hf(small, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["head_dim"] == 16
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, small(x), rtol=1e-4, atol=1e-4)
        assert load_hf(tmp_path / "hf").cfg.to_dict() == {**cfg.to_dict(), "name": "hf"}
        tok = Tokenizer.train([(ROOT / "minillm" / "prune.py").read_text()], vocab_size=300)
        save_gguf(small, tmp_path / "m.gguf", tok)
        back = load_gguf(tmp_path / "m.gguf")
        assert back.cfg.head_dim == 16 and torch.equal(back(x), small(x))


# ------------------------------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    "A debug-preset run trained for a few steps: a checkpoint with its tokenizer."
    from minillm.config import TrainConfig
    from minillm.train import train_run

    out = tmp_path_factory.mktemp("run")
    tcfg = TrainConfig.from_preset("debug", out_dir=str(out), data=("builtin?max_bytes=60000",), tokenizer_bytes=60_000,
                                   max_steps=8, eval_every=0, save_every=0, sample_tokens=0, time_limit=None)
    torch.manual_seed(0)
    train_run(LlamaConfig.from_name("debug"), tcfg, progress=False, verbose=False)
    return out


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "calibration.txt"
    path.write_text("".join(f"def f{i}(x):\n    return x * {i} + sum(range({i}))\n\n" for i in range(300)))
    return path


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def test_prune_command_output_loads_everywhere(run, text, tmp_path):
    from transformers import LlamaForCausalLM

    out = tmp_path / "pruned"
    code, stdout, err = run_cli("prune", "--ckpt", run, "--out", out, "--params", "0.75", "--calibration-data", text,
                                "--calibration-samples", "12")
    assert code == 0, err
    info = json.loads((out / "prune.json").read_text())
    model = load_hf(out)
    assert info["shape"] == {k: getattr(model.cfg, k) for k in ("n_layers", "dim", "n_heads", "n_kv_heads", "ffn_dim")}
    assert info["calibration"]["windows"] == [12, 64] and info["n_params"]["after"] == model.num_params()
    assert 0.72 < model.num_params() / info["n_params"]["before"] < 0.82 and len(info["channels"]) == model.cfg.dim
    assert f"{model.num_params():,} parameters" in stdout
    hf = LlamaForCausalLM.from_pretrained(out).eval()
    x = torch.randint(0, 512, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), rtol=1e-4, atol=1e-4)
    code, _, err = run_cli("eval", "--ckpt", out, "--data", text, "--json", tmp_path / "bpb.json")
    assert code == 0 and json.loads((tmp_path / "bpb.json").read_text())["bpb"] > 0, err
    code, sample, err = run_cli("generate", "--ckpt", out, "--prompt", "def ", "--max-new-tokens", "5", "--temperature", "0")
    assert code == 0 and sample.startswith("def "), err
    assert run_cli("export", "--ckpt", out, "--out", tmp_path / "m.gguf", "--format", "gguf")[0] == 0
    code, log, err = run_cli("train", "--preset", "debug", "--init", out, "--teacher", run, "--data", text, "--out",
                             tmp_path / "healed", "--max-steps", "2", "--time-limit", "0", "--eval-every", "0",
                             "--no-progress", "--threads", "1")
    assert code == 0, err
    assert f"starting from the weights of Hugging Face model {out}" in log + err and "distillation from" in log + err
    assert json.loads(next((tmp_path / "healed" / "checkpoints").glob("step-*/config.json")).read_text())["dim"] == model.cfg.dim


def test_prune_command_refuses_to_overwrite_and_names_bad_input(run, text, tmp_path):
    out = tmp_path / "p"
    common = ("--calibration-data", text, "--calibration-samples", "4")
    assert run_cli("prune", "--ckpt", run, "--out", out, "--ffn-dim", "100", *common)[0] == 0
    code, _, err = run_cli("prune", "--ckpt", run, "--out", out, "--ffn-dim", "64", *common)
    assert code == 2 and "--force" in err and load_hf(out).cfg.ffn_dim == 100
    assert run_cli("prune", "--ckpt", run, "--out", out, "--ffn-dim", "64", "--force", *common)[0] == 0
    assert load_hf(out).cfg.ffn_dim == 64 and sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no temp left
    cases = [(["--params", "1.5"], "strictly between 0 and 1"), (["--params", "0"], "strictly between 0 and 1"),
             (["--dim", "128"], "dim=128 must be an integer from 1 to the model's dim=64"),
             (["--n-heads", "3"], "valid n_heads are 1, 2, 4"), (["--n-heads", "3", "--n-kv-heads", "2"], "not a multiple"),
             ([], "give --params FRACTION"), (["--params", "0.5", "--dim", "32"], "one or the other"),
             (["--ffn-dim", "8", "--calibration-samples", "0"], "--calibration-samples 0 must be at least 1")]
    for args, message in cases:
        code, _, err = run_cli("prune", "--ckpt", run, "--out", tmp_path / "x", *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("minillm prune: error: ") and message in err, (args, err)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------- exercise checks
def _solutions():
    spec = importlib.util.spec_from_file_location("solutions_19_prune", ROOT / "solutions" / "19_prune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exercise_checks_pass_the_solutions_and_fail_wrong_answers(capsys):
    sol = _solutions()
    for name in ("neuron_importance", "layer_influence", "slice_ffn"):
        getattr(check, name)(getattr(sol, name))
    assert capsys.readouterr().out.count("matches") == 2
    wrong = [("neuron_importance", lambda a: a.abs().mean(dim=(0, 1)), "activations of shape"),  # a mean over the batch
             ("neuron_importance", lambda a: a.mean(dim=1).norm(dim=0), "values differ"),  # signed mean: cancels out
             ("layer_influence", lambda a, b: F.cosine_similarity(a, b, dim=-1).mean().item(), "identity block"),
             ("layer_influence", lambda a, b: 1 - F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item(), "random input"),
             ("slice_ffn", lambda ff, keep: sol.slice_ffn(ff, keep.sort().values.flip(0)[:len(keep) - 1]), "keep="),
             ("slice_ffn", lambda ff, keep: _slice_wrong_w2(sol, ff, keep), "values differ")]
    for name, fn, message in wrong:
        with pytest.raises(AssertionError, match=message):
            getattr(check, name)(fn)


def _slice_wrong_w2(sol, ff, keep):  # slices w2's rows instead of its columns: fails only where shapes allow
    small = sol.slice_ffn(ff, keep)
    with torch.no_grad():
        small.w2.weight.copy_(ff.w2.weight[:, torch.arange(len(keep))])
    return small
