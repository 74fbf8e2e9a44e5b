"""8- and 4-bit weights checked against libraries no one here wrote: torchao's weight-only quantization (the
dequantized weights to the bit), llama.cpp's Q4_0 as the gguf package computes it (to the bit, and in the GGUF file
`minillm export --quant q4_0` writes); GPTQ against round-to-nearest; the packed checkpoint through quantize, load,
generate and export; TinyLlama's packed size counted by hand."""
import contextlib
import io
import json
import logging
import math
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

from exercises import fails, load_solutions, passes
from minillm.cli import main
from minillm.config import LlamaConfig
from minillm.export import load_for_export, load_gguf
from minillm.model import Llama
from minillm.quantize import (
    QuantEmbedding,
    QuantLinear,
    gptq_quantize,
    load_quantized,
    pack_int4,
    packed_bytes,
    quantize_model,
    quantize_weight,
    save_quantized,
    unpack_int4,
)

import gguf.quants  # noqa: E402
from gguf import GGMLQuantizationType as Q  # noqa: E402

warnings.filterwarnings("ignore", module="torchao")
logging.getLogger("torchao").setLevel(logging.ERROR)
from torchao.quantization import IntxWeightOnlyConfig, quantize_  # noqa: E402
from torchao.quantization.granularity import PerAxis, PerGroup  # noqa: E402
from torchao.quantization.quant_primitives import MappingType  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def torchao_dequantized(w, bits, group_size, zero_point):
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    lin.weight.data.copy_(w)
    quantize_(torch.nn.Sequential(lin), IntxWeightOnlyConfig(
        weight_dtype=getattr(torch, f"int{bits}"), granularity=PerGroup(group_size) if group_size else PerAxis(0),
        mapping_type=MappingType.ASYMMETRIC if zero_point else MappingType.SYMMETRIC, scale_dtype=torch.float16))
    return lin.weight.dequantize()


def weights(seed, shape=(48, 256)):
    "Weights with a spread of magnitudes, outlier columns, a heavy tail and an all-positive row."
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=gen) * 0.02
    w[:, :3] *= 20
    w[1] = w[1].abs()
    w[2] = torch.distributions.StudentT(2.0).sample((shape[1],)) * 0.01
    return w


@pytest.mark.parametrize("bits,group_size", [(8, None), (4, None), (4, 128), (4, 64), (4, 32), (8, 32)])
@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
def test_round_to_nearest_equals_torchao_to_the_bit(bits, group_size, scheme):
    for seed in range(3):
        w = weights(seed)
        ours = quantize_weight(w, bits, group_size, scheme)
        assert torch.equal(ours.dequantize(), torchao_dequantized(w, bits, group_size, scheme == "asymmetric"))
        lo, hi = (-8, 7) if bits == 4 else (-128, 127)
        assert ours.q.min() >= lo and ours.q.max() <= hi


def test_q4_0_equals_llama_cpps_blocks_to_the_bit():
    for seed in range(4):
        w = weights(seed)
        w[5, :32] = 0.0  # an all-zero block
        w[6, :32] = torch.linspace(-1, 2, 32)  # the largest weight positive: the scale is negative
        theirs = gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), Q.Q4_0), Q.Q4_0)
        assert torch.equal(quantize_weight(w, 4, 32, "q4_0").dequantize(), torch.from_numpy(theirs.copy()))


def test_packing_and_ragged_groups():
    q = torch.randint(-8, 8, (7, 33), dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (7, 17)
    assert torch.equal(unpack_int4(packed, 33), q)
    w = weights(0, (16, 100))  # 100 columns: groups of 32, 32, 32 and a last one of 4
    qw = quantize_weight(w, 4, 32)
    assert qw.scales.shape == (16, 4)
    last = quantize_weight(w[:, 96:], 4, None)  # the short group alone, as one row-wide group
    assert torch.equal(qw.dequantize()[:, 96:], last.dequantize())


@pytest.mark.parametrize("scheme,group_size", [("symmetric", 32), ("asymmetric", 64), ("q4_0", 32), ("symmetric", None)])
def test_gptq_with_identity_hessian_is_round_to_nearest(scheme, group_size):
    w = weights(1, (24, 200))
    ours = gptq_quantize(w, torch.eye(200), 4, group_size, scheme)
    rtn = quantize_weight(w, 4, group_size, scheme)
    assert torch.equal(ours.q, rtn.q) and torch.equal(ours.scales, rtn.scales)


def test_gptq_lowers_the_output_error_on_correlated_inputs():
    w = weights(2, (64, 256))
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(4096, 256, generator=gen) @ (torch.randn(256, 256, generator=gen) * 0.1 + torch.eye(256))
    H = X.T @ X / len(X)
    for bits, group_size in ((4, 32), (4, 128), (4, None), (8, None)):
        err = lambda qw: (X @ (qw.dequantize() - w).T).norm()
        assert err(gptq_quantize(w, H, bits, group_size)) < err(quantize_weight(w, bits, group_size))


def test_packed_modules_compute_with_the_dequantized_weights():
    w = weights(3, (40, 64))
    qw = quantize_weight(w, 4, 32, "asymmetric")
    lin = QuantLinear.from_weight(qw)
    x = torch.randn(2, 5, 64)
    assert torch.equal(lin(x), F.linear(x, qw.dequantize()))
    assert lin.qweight.dtype == torch.uint8 and lin.qweight.shape == (40, 32)
    emb = QuantEmbedding.from_weight(qw)
    ids = torch.tensor([[0, 39, 7], [7, 7, 1]])
    assert torch.equal(emb(ids), F.embedding(ids, qw.dequantize()))
    assert set(lin.state_dict()) == {"weight"} and torch.equal(lin.state_dict()["weight"], qw.dequantize())


@pytest.mark.parametrize("tie", [False, True])
def test_model_round_trip_and_dequantized_twin(tmp_path, tie):
    torch.manual_seed(0)
    model = Llama(LlamaConfig.from_name("debug", tie_embeddings=tie)).eval()
    qm = quantize_model(model, 4, 32, embed_bits=4 if tie else 8)
    twin = Llama(model.cfg).eval()
    twin.load_state_dict(qm.state_dict())  # the float weights the packed model stands for
    tokens = torch.randint(0, 512, (2, 30))
    with torch.no_grad():
        assert torch.equal(qm(tokens), twin(tokens))
        path = save_quantized(qm, tmp_path / "q")
        loaded, tok, info = load_quantized(path)
        assert torch.equal(loaded(tokens), qm(tokens)) and tok is None and info["format"] == "minillm-quantized/1"
    size = (path / "model.safetensors").stat().st_size
    assert packed_bytes(qm) < size < packed_bytes(qm) + 16_000  # the tensors plus a JSON header
    assert all(not t.is_meta for t in loaded.state_dict().values())


def test_tinyllama_packed_size_counted_by_hand():
    """Every matrix of TinyLlama (32000 × 2048 embedding and head; 22 layers of 2048², 256 × 2048 twice, 2048² and
    three 5632 × 2048) at half a byte per weight plus a 2-byte scale per group; norms in float32."""
    with torch.device("meta"):
        tiny = Llama(LlamaConfig.from_name("tinyllama-1.1b"))
    layer = [(2048, 2048), (256, 2048), (256, 2048), (2048, 2048), (5632, 2048), (2048, 5632), (5632, 2048)]
    norms = 4 * (2048 * (2 * 22 + 1))

    def size(g, embed_bits):
        mats = sum(o * i // 2 + o * math.ceil(i / g) * 2 for o, i in layer) * 22
        embed = 32000 * 2048 // 2 + 32000 * (2048 // g) * 2 if embed_bits == 4 else 32000 * 2048 + 32000 * 2
        return mats + 2 * embed + norms

    for g, embed_bits in ((32, 4), (32, 8), (128, 8)):
        assert packed_bytes(quantize_model(tiny, 4, g, embed_bits=embed_bits)) == size(g, embed_bits)
    assert size(32, 4) <= 637e6 and size(128, 8) <= 637e6 and size(32, 8) > 637e6


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    "A debug-preset run trained for a few steps: a checkpoint with its tokenizer and training data."
    from minillm.config import TrainConfig
    from minillm.train import train_run

    out = tmp_path_factory.mktemp("run")
    tcfg = TrainConfig.from_preset("debug", out_dir=str(out), data=("builtin?max_bytes=80000",), tokenizer_bytes=80_000,
                                   max_steps=15, eval_every=0, save_every=0, sample_tokens=0, time_limit=None)
    torch.manual_seed(0)
    train_run(LlamaConfig.from_name("debug"), tcfg, progress=False, verbose=False)
    return out


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def test_quantize_command_gptq_then_generate_eval_and_export(run, tmp_path):
    from transformers import LlamaForCausalLM

    code, out, err = run_cli("quantize", "--ckpt", run, "--out", tmp_path / "q4", "--bits", "4", "--method", "gptq",
                             "--calibration-samples", "16")
    assert code == 0, err
    info = json.loads((tmp_path / "q4" / "quantization.json").read_text())
    assert info["method"] == "gptq" and info["calibration"]["windows"] == [16, 64]
    assert info["tensors"]["layers.0.attention.wq"] == dict(kind="QuantLinear", bits=4, group_size=32, shape=[64, 64],
                                                            zero_point=False)
    model, tok, name = load_for_export(tmp_path / "q4")
    assert isinstance(model.layers[1].feed_forward.w2, QuantLinear) and name.endswith("int4-g32-gptq")
    code, text, _ = run_cli("generate", "--ckpt", tmp_path / "q4", "--prompt", "def ", "--max-new-tokens", "10",
                            "--temperature", "0")
    assert code == 0 and text.startswith("def ")
    text = tmp_path / "text.txt"
    text.write_text("Quantized weights, measured the way every checkpoint is.\n" * 20)
    code, _, err = run_cli("eval", "--ckpt", tmp_path / "q4", "--data", text, "--json", tmp_path / "bpb.json")
    assert code == 0, err
    from minillm.evaluate import text_bpb

    assert json.loads((tmp_path / "bpb.json").read_text())["bpb"] == pytest.approx(
        text_bpb(model, tok, [text.read_text()])["bpb"], rel=1e-9)
    assert run_cli("export", "--ckpt", tmp_path / "q4", "--out", tmp_path / "hf")[0] == 0
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf")  # dequantized float weights
    ids = torch.tensor([tok.encode("import os\n", bos=True)])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, model(ids), atol=1e-5)


def test_q4_0_gguf_export_holds_minillms_own_q4_0_weights(run, tmp_path):
    "The GGUF file `export --quant q4_0` writes, read back by gguf, has the weights of minillm's q4_0 checkpoint."
    assert run_cli("quantize", "--ckpt", run, "--out", tmp_path / "q", "--bits", "4", "--scheme", "q4_0",
                   "--group-size", "32")[0] == 0
    ours, _, _ = load_quantized(tmp_path / "q")
    for source in (run, tmp_path / "q"):  # from full precision, and from the quantized folder: the same blocks
        path = tmp_path / f"{source.name}.gguf"
        assert run_cli("export", "--ckpt", source, "--out", path, "--format", "gguf", "--quant", "q4_0")[0] == 0
        types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
        assert types["blk.0.attn_q.weight"] == Q.Q4_0 and types["token_embd.weight"] == Q.Q4_0
        theirs = load_gguf(path).state_dict()
        for name, t in ours.state_dict().items():
            if name.endswith("w2.weight"):  # 176 columns are not whole blocks of 32: llama.cpp keeps them in float
                continue
            assert torch.equal(theirs[name], t), name


def test_bad_quantize_input_is_one_line(run, tmp_path):
    quantized = tmp_path / "q8"
    assert run_cli("quantize", "--ckpt", run, "--out", quantized, "--bits", "8")[0] == 0
    hf = tmp_path / "hf"
    assert run_cli("export", "--ckpt", run, "--out", hf)[0] == 0
    cases = [(["--ckpt", run, "--out", tmp_path / "x", "--bits", "4", "--scheme", "q4_0", "--group-size", "64"], "q4_0"),
             (["--ckpt", quantized, "--out", tmp_path / "x", "--bits", "4"], "already quantized"),
             (["--ckpt", hf, "--out", tmp_path / "x", "--bits", "4", "--method", "gptq"], "--calibration-data"),
             (["--ckpt", run, "--out", quantized, "--bits", "4"], "already exists"),
             (["--ckpt", tmp_path / "nowhere", "--out", tmp_path / "x", "--bits", "4"], "nowhere")]
    for argv, message in cases:
        code, out, err = run_cli("quantize", *argv)
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


C17 = load_solutions("17_quantize")

EXERCISES_17 = [  # (check, a plausible wrong answer, what its message must name)
    ("quantize_int8", lambda w: (C17.quantize_int8(w)[0], w.abs().amax(1, keepdim=True) / 127),
     "a (16, 64) matrix: the scales"),  # divides by 127: the grid is one step short
    ("quantize_int8", lambda w: (torch.round(w / (w.abs().amax(1, keepdim=True) / 127.5)), C17.quantize_int8(w)[1]),
     "a (16, 64) matrix: the integers q"),  # float integers, unclamped: not int8
    ("quantize_int4", lambda w, g: quantize_weight(w, 4, g, "q4_0") if g == 32 else quantize_weight(w, 4, None),
     "a (8, 64) matrix, group_size 32"),  # llama.cpp's grid, not the symmetric one
    ("gptq_quantize", lambda w, H, g: C17.quantize_int4(w, g), "correlated inputs"),  # round-to-nearest is not GPTQ
    ("gptq_quantize", lambda w, H, g: gptq_quantize(w, H, 4, 2 * g), "group_size 32"),
]


@pytest.mark.parametrize("name", ["quantize_int8", "quantize_int4", "gptq_quantize"])
def test_check_passes_the_solution(name, capsys):
    passes(name, getattr(C17, name), capsys)


@pytest.mark.parametrize("name,wrong,where", EXERCISES_17, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(EXERCISES_17)])
def test_check_fails_a_wrong_answer(name, wrong, where):
    fails(name, wrong, where)
