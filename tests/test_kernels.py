"""Triton kernels against eager PyTorch: forward and backward on odd shapes and both dtypes, the switch, fallbacks.

Without a GPU the kernels run in Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1); with one,
the same tests run the compiled kernels on CUDA. Tests marked `gpu` check TinyLlama-sized shapes and torch.compile.
"""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minillm.config import LlamaConfig
from minillm.kernels import apply_kernels, compile_model, kernels_in_use, resolve_kernels
from minillm.kernels.attention import sdpa_attend
from minillm.kernels.cross_entropy import (cross_entropy, cross_entropy_torch, linear_cross_entropy,
                                           linear_cross_entropy_torch)
from minillm.kernels.rmsnorm import rms_norm, rms_norm_torch, triton_ok
from minillm.kernels.rope import apply_rope, apply_rope_torch
from minillm.kernels.swiglu import swiglu, swiglu_torch
from minillm.kernels.switch import train_steps
from minillm.model import Llama, lm_loss
from minillm.norm import RMSNorm

ROOT = Path(__file__).resolve().parent.parent
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# bf16 keeps 8 significant bits (a relative step of 2^-8); the CPU interpreter also truncates instead of rounding
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def rand(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, device=DEVICE) * scale).to(dtype)


def check_fn(fn, ref, inputs, grad_idx, tol, grad_fn_name):
    "fn and ref agree forward and backward (for the inputs at grad_idx), and fn really ran the Triton function."
    a = [x.detach().clone().requires_grad_(i in grad_idx) if isinstance(x, torch.Tensor) else x for i, x in enumerate(inputs)]
    b = [x.detach().clone().requires_grad_(i in grad_idx) if isinstance(x, torch.Tensor) else x for i, x in enumerate(inputs)]
    y_ref, y = ref(*a), fn(*b)
    assert type(y.grad_fn).__name__ == grad_fn_name, f"expected the Triton path, got {type(y.grad_fn).__name__}"
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    dy = torch.randn_like(y_ref)
    g_ref = torch.autograd.grad(y_ref, [a[i] for i in grad_idx], dy)
    g = torch.autograd.grad(y, [b[i] for i in grad_idx], dy)
    for got, want in zip(g, g_ref):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * max(1.0, want.abs().max().item()))


def test_triton_runs_here():
    "The kernel tests below mean something only if the Triton path is available (GPU, or the CPU interpreter)."
    assert triton_ok(torch.empty(1, device=DEVICE))


# --- RMSNorm -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 2048), (3, 5632), (7, 2049), (2, 9, 64), (5, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm(shape, dtype):
    x, w = rand(*shape, dtype=dtype), rand(shape[-1], dtype=dtype)
    check_fn(lambda x, w: rms_norm(x, w, 1e-5), lambda x, w: rms_norm_torch(x, w, 1e-5), [x, w], (0, 1),
             TOL[dtype], "RMSNormFunctionBackward")


def test_rms_norm_mixed_dtypes_and_strided_input():
    # a bf16 activation with a float32 weight (autocast-style) gives float32, as eager does; a strided view needs no copy
    x = rand(4, 3, 200)[:, 1]
    w = rand(200)
    check_fn(lambda x, w: rms_norm(x.bfloat16(), w), lambda x, w: rms_norm_torch(x.bfloat16(), w), [x, w], (0, 1),
             TOL[torch.bfloat16], "RMSNormFunctionBackward")


def test_rms_norm_bad_weight():
    with pytest.raises(ValueError, match="width"):
        rms_norm(rand(2, 8), rand(7))


# --- RoPE ------------------------------------------------------------------------------------------------------------

def _angles(T, head_dim):
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    a = torch.arange(T).float()[:, None] * inv_freq[None, :]
    return a.cos().to(DEVICE), a.sin().to(DEVICE)


@pytest.mark.parametrize("shape", [(1, 1, 1, 2), (2, 7, 4, 64), (1, 5, 32, 64), (3, 2, 3, 6)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope(shape, dtype):
    cos, sin = _angles(shape[1], shape[-1])
    check_fn(apply_rope, apply_rope_torch, [rand(*shape, dtype=dtype), cos, sin], (0,), TOL[dtype],
             "RoPEFunctionBackward")


def test_rope_strided_query_from_fused_projection():
    qkv = rand(2, 5, 12, 16)
    cos, sin = _angles(5, 16)
    check_fn(lambda x, c, s: apply_rope(x[:, :, 2:10], c, s), lambda x, c, s: apply_rope_torch(x[:, :, 2:10], c, s),
             [qkv, cos, sin], (0,), 1e-5, "RoPEFunctionBackward")


def test_rope_bad_shapes():
    cos, sin = _angles(5, 16)
    with pytest.raises(ValueError, match=r"\(T, head_dim/2\)"):
        apply_rope(rand(1, 6, 2, 16), cos, sin)
    with pytest.raises(ValueError, match="even head_dim"):
        apply_rope(rand(1, 5, 2, 15), cos, sin)


# --- SwiGLU ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 5632), (3, 2049), (2, 3, 7), (1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu(shape, dtype):
    check_fn(swiglu, swiglu_torch, [rand(*shape, dtype=dtype), rand(*shape, dtype=dtype)], (0, 1), TOL[dtype],
             "SwiGLUFunctionBackward")


def test_swiglu_saves_only_its_inputs():
    a, b = rand(4, 100).requires_grad_(), rand(4, 100).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        swiglu(a, b)
    assert len(saved) == 2


def test_swiglu_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        swiglu(rand(2, 3), rand(2, 4))


# --- cross-entropy ---------------------------------------------------------------------------------------------------

def _targets(n, vocab, ignore=(), ignore_index=-100):
    t = torch.randint(0, vocab, (n,), device=DEVICE)
    for i in ignore:
        t[i] = ignore_index
    return t


@pytest.mark.parametrize("rows,vocab,ignore", [(1, 32000, ()), (5, 2049, (1,)), (3, 5632, (0, 2)), (19, 512, (3, 4, 18))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy(rows, vocab, ignore, dtype):
    t = _targets(rows, vocab, ignore)
    check_fn(lambda x: cross_entropy(x, t), lambda x: cross_entropy_torch(x, t), [rand(rows, vocab, dtype=dtype)], (0,),
             TOL[dtype], "CrossEntropyFunctionBackward")


def test_cross_entropy_3d_logits_and_other_ignore_index():
    t = _targets(6, 300, (0, 5), ignore_index=7).view(2, 3)
    check_fn(lambda x: cross_entropy(x, t, ignore_index=7), lambda x: cross_entropy_torch(x, t, ignore_index=7),
             [rand(2, 3, 300)], (0,), 1e-5, "CrossEntropyFunctionBackward")


def test_cross_entropy_all_ignored_is_zero_with_zero_grad_like_eager():
    x = rand(3, 50).requires_grad_()
    loss = cross_entropy(x, torch.full((3,), -100, device=DEVICE))
    loss.backward()
    assert loss.item() == 0.0 and cross_entropy_torch(x, torch.full((3,), -100, device=DEVICE)).item() == 0.0
    assert (x.grad == 0).all()


def test_cross_entropy_without_grad_and_bad_targets():
    x = rand(4, 64)
    t = _targets(4, 64)
    with torch.no_grad():
        torch.testing.assert_close(cross_entropy(x, t), cross_entropy_torch(x, t))
    with pytest.raises(ValueError, match="targets for 4 rows"):
        cross_entropy(x, t[:3])
    with pytest.raises(ValueError, match="integer"):
        cross_entropy(x, t.float())
    if DEVICE == "cpu":  # range checks would cost a GPU sync, so only the CPU checks them
        with pytest.raises(ValueError, match=r"in \[0, 64\)"):
            cross_entropy(x, torch.tensor([0, 1, 64, 2]))


def test_cross_entropy_second_backward_accumulates_like_eager():
    x, t = rand(2, 30).requires_grad_(), _targets(2, 30)
    loss = cross_entropy(x, t) * 3
    loss.backward(retain_graph=True)
    loss.backward()
    xr = x.detach().clone().requires_grad_()
    (cross_entropy_torch(xr, t) * 6).backward()
    torch.testing.assert_close(x.grad, xr.grad)


def test_linear_cross_entropy_second_backward_fails_loudly():
    # the fused loss scales its saved gradients in place, so a second backward must not silently double them
    h = rand(3, 8).requires_grad_()
    loss = linear_cross_entropy(h, rand(20, 8), _targets(3, 20))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError):
        loss.backward()


def test_submodules_are_not_hidden_by_reexports():
    import importlib
    for name in ("rmsnorm", "rope", "swiglu", "cross_entropy", "attention", "switch"):
        assert importlib.import_module(f"minillm.kernels.{name}").__name__ == f"minillm.kernels.{name}"
        assert not callable(getattr(sys.modules["minillm.kernels"], name))


@pytest.mark.parametrize("rows,dim,vocab,chunk", [(10, 64, 1000, 4), (1, 32, 2049, None), (7, 48, 300, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_cross_entropy(rows, dim, vocab, chunk, dtype):
    t = _targets(rows, vocab, (0,) if rows > 1 else ())
    check_fn(lambda h, w: linear_cross_entropy(h, w, t, chunk_rows=chunk),
             lambda h, w: linear_cross_entropy_torch(h, w, t), [rand(rows, dim, dtype=dtype), rand(vocab, dim, dtype=dtype, scale=0.1)],
             (0, 1), 3 * TOL[dtype], "LinearCrossEntropyFunctionBackward")


def test_linear_cross_entropy_frozen_weight_and_3d_hidden():
    t = _targets(6, 200).view(2, 3)
    check_fn(lambda h, w: linear_cross_entropy(h, w, t, chunk_rows=4), lambda h, w: linear_cross_entropy_torch(h, w, t),
             [rand(2, 3, 32), rand(200, 32, scale=0.1)], (0,), 1e-5, "LinearCrossEntropyFunctionBackward")


def test_linear_cross_entropy_under_autocast():
    # float32 parameters, bf16 matmuls: the fused loss follows autocast like nn.Linear, gradients come back in float32
    t = _targets(8, 300)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        check_fn(lambda h, w: linear_cross_entropy(h, w, t, chunk_rows=3), lambda h, w: linear_cross_entropy_torch(h, w, t),
                 [rand(8, 64), rand(300, 64, scale=0.1)], (0, 1), 5e-2, "LinearCrossEntropyFunctionBackward")


def test_int32_targets_like_the_model_loss():
    h, w = rand(2, 4, 16), rand(50, 16)
    t = _targets(8, 50, (1,)).view(2, 4)
    ref = lm_loss(h, w, t)
    torch.testing.assert_close(linear_cross_entropy(h, w, t.int()), ref)
    torch.testing.assert_close(linear_cross_entropy_torch(h, w, t.int()), ref)
    torch.testing.assert_close(cross_entropy(h @ w.T, t.int()), ref)


def test_linear_cross_entropy_is_the_model_loss():
    h, w, t = rand(2, 4, 16), rand(50, 16), _targets(8, 50, (1,)).view(2, 4)
    torch.testing.assert_close(linear_cross_entropy(h, w, t), lm_loss(h, w, t))
    with pytest.raises(ValueError, match="do not match"):
        linear_cross_entropy(h, rand(50, 8), t)


# --- the switch ------------------------------------------------------------------------------------------------------

def _debug_model(**kw):
    torch.manual_seed(0)
    return Llama(LlamaConfig.from_name("debug", **kw)).to(DEVICE)


def test_apply_kernels_swaps_and_restores_in_place():
    model = _debug_model()
    keys = list(model.state_dict())
    weight = model.layers[0].attention_norm.weight
    assert apply_kernels(model, "triton") is model
    used = kernels_in_use(model)
    assert "kernels.rmsnorm" in used["norm"] and "kernels.rope" in used["rope"]
    assert "kernels.swiglu" in used["swiglu"] and used["loss"].endswith("linear_cross_entropy")
    assert isinstance(model.layers[0].attention_norm, RMSNorm) and model.layers[0].attention_norm.weight is weight
    assert list(model.state_dict()) == keys
    apply_kernels(model, "torch")
    assert kernels_in_use(model) == {"norm": "minillm.norm.rms_normalize", "rope": "minillm.rope.apply_rope",
                                     "attend": "minillm.attention.attend", "swiglu": "minillm.mlp.swiglu",
                                     "loss": "minillm.model.lm_loss"}


def test_apply_kernels_reads_the_config_and_resolves_auto():
    assert kernels_in_use(apply_kernels(_debug_model(kernels="torch")))["loss"] == "minillm.model.lm_loss"
    auto = "triton" if DEVICE == "cuda" else "torch"
    assert resolve_kernels("auto", DEVICE) == auto
    assert resolve_kernels("auto", "cpu") == "torch"
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        resolve_kernels("triton", "mps")
    with pytest.raises(ValueError, match="not one of"):
        resolve_kernels("fast", "cpu")


def test_apply_kernels_on_meta_device_and_attention_choice():
    with torch.device("meta"):
        model = Llama(LlamaConfig.from_name("debug"))
    apply_kernels(model, "auto", attention="math")
    assert kernels_in_use(model)["attend"].endswith("sdpa_attend_math")
    assert kernels_in_use(model)["loss"].endswith("linear_cross_entropy" if torch.cuda.is_available() else "lm_loss")
    with pytest.raises(ValueError, match="unknown SDPA backend"):
        apply_kernels(model, "torch", attention="flash3")


def test_apply_kernels_reaches_wrapped_norms():
    "Every seam is an attribute: a norm whose class a wrapper changed still gets its kernel (no class swapping)."
    model = _debug_model()
    model.norm.__class__ = type("FSDPRMSNorm", (RMSNorm,), {})  # what fully_shard does to a module's class
    apply_kernels(model, "triton")
    assert "kernels.rmsnorm" in kernels_in_use(model)["norm"] and type(model.norm).__name__ == "FSDPRMSNorm"
    x = torch.randn(2, 3, model.cfg.dim, device=DEVICE)
    torch.testing.assert_close(model.norm(x), rms_norm_torch(x, model.norm.weight, model.norm.eps), rtol=1e-5, atol=1e-5)


def test_model_same_loss_and_grads_with_triton_kernels():
    model = _debug_model()
    seq = torch.randint(0, 512, (2, 17), device=DEVICE)
    tokens, targets = seq[:, :-1], seq[:, 1:].clone()
    targets[0, :3] = -100
    results = {}
    for k in ("triton", "torch"):
        apply_kernels(model, k)
        model.zero_grad()
        loss = model(tokens, targets=targets)
        loss.backward()
        results[k] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, model(tokens).detach())
    torch.testing.assert_close(results["triton"][0], results["torch"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results["triton"][2], results["torch"][2], rtol=1e-5, atol=1e-5)
    for n, g in results["torch"][1].items():
        torch.testing.assert_close(results["triton"][1][n], g, rtol=1e-4, atol=1e-5)


def test_compile_model_keeps_the_numbers():
    model = _debug_model()
    seq = torch.randint(0, 512, (2, 9), device=DEVICE)
    ref = model(seq[:, :-1], targets=seq[:, 1:])
    compile_model(model, backend="eager")  # dynamo tracing only: fast on any machine
    assert model.layers[0]._compiled_call_impl is not None and model.loss_fn is not lm_loss
    assert list(model.state_dict()) == list(_debug_model().state_dict())
    torch.testing.assert_close(model(seq[:, :-1], targets=seq[:, 1:]), ref)


@pytest.mark.slow
def test_training_converges_the_same_with_triton_kernels():
    base = _debug_model()
    curves = {k: train_steps(apply_kernels(copy.deepcopy(base), k), steps=30) for k in ("torch", "triton")}
    assert curves["torch"][-1] < curves["torch"][0] - 2  # it learns: the comparison is not between two flat lines
    torch.testing.assert_close(torch.tensor(curves["triton"]), torch.tensor(curves["torch"]), rtol=1e-3, atol=1e-3)


# --- without Triton --------------------------------------------------------------------------------------------------

NO_TRITON = """
import sys
sys.modules["triton"] = None  # `import triton` now raises ImportError, as on macOS or Windows
import torch
import minillm.kernels as k
from minillm.kernels.rmsnorm import HAS_TRITON, rms_norm, rms_norm_torch
from minillm.config import LlamaConfig
from minillm.model import Llama
assert not HAS_TRITON and not k.triton_ok(torch.empty(1))
x, w = torch.randn(3, 8, requires_grad=True), torch.randn(8)
assert torch.equal(rms_norm(x, w), rms_norm_torch(x, w))
from minillm.kernels.swiglu import swiglu
assert torch.equal(swiglu(x, x), torch.nn.functional.silu(x) * x)
model = k.apply_kernels(Llama(LlamaConfig.from_name("debug")))
assert k.kernels_in_use(model)["loss"] == "minillm.model.lm_loss"
try:
    k.apply_kernels(model, "triton")
except ValueError as e:
    print("refused:", e)
"""


def test_everything_imports_and_falls_back_without_triton():
    res = subprocess.run([sys.executable, "-c", NO_TRITON], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "refused: kernels='triton' needs the triton package" in res.stdout


# --- the benchmark script --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_benchmark_script_smoke(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--smoke", "--out", str(out),
                          "--model-layers", "1", "--no-compile"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    data = json.loads(out.read_text())
    assert {"rmsnorm", "rope_q", "rope_k", "swiglu", "cross_entropy", "linear_cross_entropy", "attention",
            "model"} <= set(data["results"])
    for kernel in ("rmsnorm", "swiglu", "cross_entropy"):
        assert [r["name"] for r in data["results"][kernel]] == ["eager", "triton"]
        assert all(r["ms"] > 0 for r in data["results"][kernel])


# --- on a GPU: TinyLlama shapes and torch.compile ---------------------------------------------------------------------

gpu = pytest.mark.gpu


@gpu
def test_gpu_tinyllama_shapes():
    assert torch.cuda.is_available()
    bf = torch.bfloat16
    x, w = rand(8 * 2048, 2048, dtype=bf), rand(2048, dtype=bf)
    check_fn(rms_norm, rms_norm_torch, [x, w], (0, 1), 2e-2, "RMSNormFunctionBackward")
    cos, sin = _angles(2048, 64)
    check_fn(apply_rope, apply_rope_torch, [rand(8, 2048, 32, 64, dtype=bf), cos, sin], (0,), 2e-2, "RoPEFunctionBackward")
    check_fn(swiglu, swiglu_torch, [rand(4096, 5632, dtype=bf), rand(4096, 5632, dtype=bf)], (0, 1), 2e-2,
             "SwiGLUFunctionBackward")
    t = _targets(8 * 2048, 32000, range(0, 16384, 97))
    check_fn(lambda x: cross_entropy(x, t), lambda x: cross_entropy_torch(x, t), [rand(8 * 2048, 32000, dtype=bf)], (0,),
             2e-2, "CrossEntropyFunctionBackward")
    check_fn(lambda h, w: linear_cross_entropy(h, w, t), lambda h, w: linear_cross_entropy_torch(h, w, t),
             [rand(8 * 2048, 2048, dtype=bf), rand(32000, 2048, dtype=bf, scale=0.02)], (0, 1), 5e-2,
             "LinearCrossEntropyFunctionBackward")


@gpu
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_gpu_compile_model_with_each_kernel_choice(kernels):
    model = _debug_model().to(torch.bfloat16)
    seq = torch.randint(0, 512, (4, 65), device="cuda")
    apply_kernels(model, kernels)
    ref = model(seq[:, :-1], targets=seq[:, 1:])
    compile_model(model)
    for _ in range(2):
        loss = model(seq[:, :-1], targets=seq[:, 1:])
        loss.backward()
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=2e-2)


@gpu
def test_gpu_attention_backends_agree():
    q, k, v = rand(2, 32, 256, 64, dtype=torch.bfloat16), rand(2, 4, 256, 64, dtype=torch.bfloat16), rand(2, 4, 256, 64, dtype=torch.bfloat16)
    ref = sdpa_attend("math")(q, k, v)
    from minillm.kernels.attention import runnable_backends
    for name, how in runnable_backends(q, k, v).items():
        if how != "no":
            torch.testing.assert_close(sdpa_attend(name, gqa=how == "gqa")(q, k, v), ref, rtol=2e-2, atol=2e-2)
