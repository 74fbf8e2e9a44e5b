"""minillm.hf: Hugging Face checkpoints in and out, checked against transformers itself, and every bad input."""
import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import LlamaConfig as HFLlamaConfig, LlamaForCausalLM  # noqa: E402

import minillm.hf as hf_module  # noqa: E402
from minillm.config import LlamaConfig  # noqa: E402
from minillm.hf import (config_from_hf, config_to_hf, from_hf_name, load_hf, save_hf, state_dict_from_hf,  # noqa: E402
                        state_dict_to_hf, to_hf_name)
from minillm.model import Llama  # noqa: E402


def randomize(model, std=0.15):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(1.0, 0.2) if p.ndim == 1 else p.normal_(0.0, std)
    return model


def small_cfg(tie=False, **kw):
    return LlamaConfig(**{**dict(vocab_size=211, dim=48, n_layers=2, n_heads=6, n_kv_heads=2, ffn_dim=72,
                                 max_seq_len=40, rope_theta=3000.0, norm_eps=1e-6, tie_embeddings=tie), **kw})


def hf_random(tie=False, **kw):
    cfg = HFLlamaConfig(**{**dict(vocab_size=211, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
                                  num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=40,
                                  rope_theta=3000.0, rms_norm_eps=1e-6, tie_word_embeddings=tie), **kw})
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(1.0, 0.2) if p.ndim == 1 else p.normal_(0.0, 0.15)
    return model



def tokens(vocab=211):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab, (2, 30), generator=g)


# -------------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("shard", [None, "10KB"])
def test_save_hf_then_transformers_from_pretrained(tmp_path, tie, shard):
    model = randomize(Llama(small_cfg(tie)))
    save_hf(model, tmp_path / "ckpt", max_shard_size=shard)
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    if shard:
        assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 1
    else:
        assert files == ["config.json", "model.safetensors"]
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    assert hf.config.rope_parameters["rope_theta"] == 3000.0 and hf.config.num_key_value_heads == 2
    assert (hf.lm_head.weight is hf.model.embed_tokens.weight) == tie
    with torch.no_grad():
        diff = (model(tokens()) - hf(tokens()).logits).abs().max().item()
    assert diff <= 1e-5
    # a tied head is not stored
    names = set()
    for f in (tmp_path / "ckpt").glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            names |= set(st.keys())
    assert ("lm_head.weight" in names) == (not tie)
    assert len(names) == 2 + 9 * 2 + (0 if tie else 1)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("shard", [None, "20KB"])
def test_transformers_save_pretrained_then_load_hf(tmp_path, tie, shard):
    hf = hf_random(tie)
    hf.save_pretrained(tmp_path / "ckpt", **({"max_shard_size": shard} if shard else {}))
    if shard:
        assert (tmp_path / "ckpt" / "model.safetensors.index.json").is_file()
    model = load_hf(tmp_path / "ckpt")
    assert model.cfg == small_cfg(tie, name="ckpt")
    assert (model.output.weight is model.tok_embeddings.weight) == tie
    assert model.num_params() == sum(p.numel() for p in hf.parameters())
    with torch.no_grad():
        diff = (model(tokens()) - hf(tokens()).logits).abs().max().item()
        assert diff <= 1e-5
        loss = model(tokens(), torch.cat([tokens()[:, 1:], torch.full((2, 1), -100)], 1))
        assert abs(loss.item() - hf(tokens(), labels=tokens()).loss.item()) <= 1e-5


def test_load_hf_dtype_and_device(tmp_path):
    hf = hf_random()
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model = load_hf(tmp_path / "bf16")
    assert model.output.weight.dtype == torch.bfloat16  # the stored dtype by default
    assert model.rope_cos.dtype == torch.float32
    assert torch.equal(model.tok_embeddings.weight, hf.model.embed_tokens.weight)
    model32 = load_hf(tmp_path / "bf16", dtype=torch.float32, device="cpu")
    assert model32.output.weight.dtype == torch.float32
    assert torch.equal(model32.output.weight, hf.lm_head.weight.float())
    with pytest.raises(ValueError, match="floating-point"):
        load_hf(tmp_path / "bf16", dtype=torch.int64)


def test_save_hf_dtype(tmp_path):
    model = randomize(Llama(small_cfg()))
    save_hf(model, tmp_path / "c", dtype=torch.bfloat16)
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16"
    assert load_file(tmp_path / "c" / "model.safetensors")["lm_head.weight"].dtype == torch.bfloat16
    assert model.output.weight.dtype == torch.float32  # the model itself is untouched
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "c")
    assert hf.lm_head.weight.dtype == torch.bfloat16


def test_config_json_has_both_rope_forms(tmp_path):
    save_hf(randomize(Llama(small_cfg())), tmp_path / "c")
    d = json.loads((tmp_path / "c" / "config.json").read_text())
    assert d["rope_theta"] == 3000.0 and d["rope_parameters"] == {"rope_type": "default", "rope_theta": 3000.0}
    assert d["architectures"] == ["LlamaForCausalLM"] and d["model_type"] == "llama"
    assert d["bos_token_id"] == 1 and d["eos_token_id"] == 2 and d["rope_scaling"] is None
    save_hf(randomize(Llama(small_cfg())), tmp_path / "d", bos_token_id=0, eos_token_id=5)
    d = json.loads((tmp_path / "d" / "config.json").read_text())
    assert (d["bos_token_id"], d["eos_token_id"]) == (0, 5)


def test_inv_freq_buffers_are_ignored(tmp_path):
    hf_random().save_pretrained(tmp_path / "c")
    f = tmp_path / "c" / "model.safetensors"
    t = load_file(f)
    t["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    t["model.layers.1.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    save_file(t, f, metadata={"format": "pt"})
    assert load_hf(tmp_path / "c").num_params() > 0


def test_tied_checkpoint_with_equal_lm_head_loads(tmp_path):
    hf_random(tie=True).save_pretrained(tmp_path / "c")
    f = tmp_path / "c" / "model.safetensors"
    t = load_file(f)
    t["lm_head.weight"] = t["model.embed_tokens.weight"].clone()
    save_file(t, f, metadata={"format": "pt"})
    model = load_hf(tmp_path / "c")
    assert model.output.weight is model.tok_embeddings.weight
    t["lm_head.weight"] = t["lm_head.weight"] + 1
    save_file(t, f, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lm_head.weight .* differs from model.embed_tokens.weight"):
        load_hf(tmp_path / "c")


# ----------------------------------------------------------------------------------------------------- mappings
def test_name_mapping_both_ways():
    model = Llama(small_cfg())
    hf = LlamaForCausalLM(HFLlamaConfig(**config_to_hf(small_cfg())))
    ours = state_dict_to_hf(model.state_dict())
    assert set(ours) == set(hf.state_dict())
    assert all(ours[k].shape == v.shape for k, v in hf.state_dict().items())
    assert set(state_dict_from_hf(hf.state_dict())) == set(model.state_dict())
    assert to_hf_name("layers.1.feed_forward.w3.weight") == "model.layers.1.mlp.up_proj.weight"
    assert from_hf_name("model.layers.12.post_attention_layernorm.weight") == "layers.12.ffn_norm.weight"
    assert "output.weight" not in state_dict_from_hf(state_dict_to_hf(Llama(small_cfg(True)).state_dict(), True))
    with pytest.raises(ValueError, match="'layers.0.attention.wx.weight'"):
        to_hf_name("layers.0.attention.wx.weight")
    with pytest.raises(ValueError, match="'model.layers.0.self_attn.q_norm.weight'"):
        from_hf_name("model.layers.0.self_attn.q_norm.weight")


@pytest.mark.parametrize("tie", [False, True])
def test_config_round_trip(tie):
    cfg = small_cfg(tie, name="x")
    assert config_from_hf(config_to_hf(cfg), name="x") == cfg
    hf_cfg = HFLlamaConfig(**config_to_hf(cfg))
    assert config_from_hf(hf_cfg.to_dict(), name="x") == cfg  # transformers 5's own form
    assert config_from_hf(json.loads(hf_cfg.to_json_string()), name="x") == cfg


def test_config_from_hf_accepts_both_rope_forms():
    base = config_to_hf(small_cfg())
    old = {k: v for k, v in base.items() if k != "rope_parameters"}  # transformers 4.x
    new = {k: v for k, v in base.items() if k not in ("rope_theta", "rope_scaling")}  # transformers 5.x
    assert config_from_hf(old).rope_theta == config_from_hf(new).rope_theta == 3000.0
    assert config_from_hf({**old, "rope_scaling": {"type": "default"}}).rope_theta == 3000.0
    bare = {k: v for k, v in new.items() if k != "rope_parameters"}
    assert config_from_hf(bare).rope_theta == 10000.0  # transformers' default
    no_kv = {k: v for k, v in base.items() if k != "num_key_value_heads"}
    assert config_from_hf(no_kv).n_kv_heads == 6


TINYLLAMA = {
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 5632, "max_position_embeddings": 2048,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 22, "num_key_value_heads": 4,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.35.0", "use_cache": True,
    "vocab_size": 32000}


def test_tinyllama_config():
    cfg = config_from_hf(TINYLLAMA, name="tinyllama-1.1b")
    assert cfg == LlamaConfig.from_name("tinyllama-1.1b")
    assert cfg.n_params == 1_100_048_384


@pytest.mark.parametrize("edit,message", [
    (dict(model_type="mistral"), "model_type='mistral'"),
    (dict(architectures=["LlamaForSequenceClassification"]), "architectures=\\['LlamaForSequenceClassification'\\]"),
    (dict(model_type=None, architectures=None), "neither model_type nor architectures"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling=.*not supported"),
    (dict(rope_scaling={"type": "dynamic", "factor": 2.0}), "rope_scaling=.*not supported"),
    (dict(rope_scaling="linear"), "rope_scaling='linear'"),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}), "rope_parameters=.*llama3"),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": 5e5}), "rope_theta=10000.0 but rope_parameters"),
    (dict(rope_parameters={"full_attention": {"rope_type": "default"}}), "per-layer"),
    (dict(attention_bias=True), "attention_bias=true"),
    (dict(mlp_bias=True), "mlp_bias=true"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(head_dim=63), "invalid model: head_dim=63 is odd"),
    (dict(vocab_size=None), "lacks vocab_size"),
    (dict(intermediate_size=None, num_hidden_layers=None), "lacks intermediate_size, num_hidden_layers"),
    (dict(num_key_value_heads=5), "invalid model: n_heads=32 is not divisible by n_kv_heads=5"),
    (dict(hidden_size=2000), "invalid model: dim=2000 is not divisible by n_heads=32"),
])
def test_config_from_hf_errors(edit, message):
    d = {k: v for k, v in {**TINYLLAMA, **edit}.items() if not (k in edit and v is None)}  # None: key removed
    with pytest.raises(ValueError, match=message):
        config_from_hf(d)


# ------------------------------------------------------------------------------------------------- load errors
@pytest.fixture
def ckpt(tmp_path):
    "A valid single-file checkpoint written by transformers."
    hf_random().save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _edit_tensors(ckpt, fn):
    f = ckpt / "model.safetensors"
    t = load_file(f)
    fn(t)
    save_file(t, f, metadata={"format": "pt"})


def _edit_config(ckpt, fn):
    c = json.loads((ckpt / "config.json").read_text())
    fn(c)
    (ckpt / "config.json").write_text(json.dumps(c))


def test_load_missing_tensors(ckpt):
    _edit_tensors(ckpt, lambda t: (t.pop("model.layers.1.mlp.up_proj.weight"), t.pop("lm_head.weight")))
    with pytest.raises(ValueError, match="missing tensors in .*: lm_head.weight, model.layers.1.mlp.up_proj.weight$"):
        load_hf(ckpt)


def test_load_unexpected_tensors(ckpt):
    _edit_tensors(ckpt, lambda t: t.update({"model.layers.2.mlp.up_proj.weight": torch.zeros(2),
                                            "model.layers.0.self_attn.q_proj.bias": torch.zeros(48)}))
    with pytest.raises(ValueError, match="unexpected tensors .*model.layers.0.self_attn.q_proj.bias, "
                                         "model.layers.2.mlp.up_proj.weight"):
        load_hf(ckpt)


def test_load_misshaped_tensors(ckpt):
    _edit_tensors(ckpt, lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": torch.zeros(48, 48)}))
    with pytest.raises(ValueError, match=r"mis-shaped tensors .*model.layers.0.self_attn.k_proj.weight is \(48, 48\), "
                                         r"expected \(16, 48\)"):
        load_hf(ckpt)


def test_load_non_float_tensor(ckpt):
    _edit_tensors(ckpt, lambda t: t.update({"model.norm.weight": torch.ones(48, dtype=torch.int32)}))
    with pytest.raises(ValueError, match=r"non-floating-point dtype .*model.norm.weight \(I32\)"):
        load_hf(ckpt)


def test_load_config_problems(ckpt):
    _edit_config(ckpt, lambda c: c.update(mlp_bias=True))
    with pytest.raises(ValueError, match="mlp_bias=true"):
        load_hf(ckpt)


def test_load_missing_files(tmp_path, ckpt):
    with pytest.raises(FileNotFoundError, match="checkpoint directory .*nowhere does not exist"):
        load_hf(tmp_path / "nowhere")
    (ckpt / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json in"):
        load_hf(ckpt)


def test_load_missing_weights_never_reads_pickles(tmp_path, ckpt):
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(FileNotFoundError, match="no model.safetensors or model.safetensors.index.json .*"
                                                "found pytorch_model.bin: pickled checkpoints are never read"):
        load_hf(ckpt)


def test_load_missing_shard(tmp_path):
    hf_random().save_pretrained(tmp_path / "c", max_shard_size="20KB")
    shard = sorted((tmp_path / "c").glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"shard {shard.name} named in model.safetensors.index.json is missing"):
        load_hf(tmp_path / "c")


def test_load_index_outside_directory(tmp_path):
    hf_random().save_pretrained(tmp_path / "c", max_shard_size="20KB")
    idx = tmp_path / "c" / "model.safetensors.index.json"
    d = json.loads(idx.read_text())
    d["weight_map"]["model.norm.weight"] = "../evil.safetensors"
    idx.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="outside the checkpoint directory"):
        load_hf(tmp_path / "c")


# ------------------------------------------------------------------------------------------------- save errors
def test_save_refuses_non_empty_directory_unless_overwrite(tmp_path):
    a, b = randomize(Llama(small_cfg())), randomize(Llama(small_cfg()))
    (tmp_path / "c").mkdir()
    save_hf(a, tmp_path / "c")  # an empty directory is fine
    with pytest.raises(FileExistsError, match="exists and is not empty; pass overwrite=True"):
        save_hf(b, tmp_path / "c")
    assert torch.equal(load_hf(tmp_path / "c").output.weight, a.output.weight)  # untouched
    save_hf(b, tmp_path / "c", overwrite=True, max_shard_size=20_000)
    assert torch.equal(load_hf(tmp_path / "c").output.weight, b.output.weight)
    assert not (tmp_path / "c" / "model.safetensors").exists()  # the old single file went with the old directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temporary directories left behind
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="is not a directory"):
        save_hf(a, tmp_path / "f", overwrite=True)


def test_save_is_atomic(tmp_path, monkeypatch):
    model = randomize(Llama(small_cfg()))
    save_hf(model, tmp_path / "c")
    before = (tmp_path / "c" / "model.safetensors").read_bytes()

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(hf_module, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        save_hf(randomize(Llama(small_cfg())), tmp_path / "c", overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        save_hf(model, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # nothing half-written, no temp dirs
    assert (tmp_path / "c" / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("size,message", [("lots", "max_shard_size='lots'"), (0, "max_shard_size=0"),
                                          ("-5MB", "max_shard_size='-5MB'")])
def test_save_bad_shard_size(tmp_path, size, message):
    with pytest.raises(ValueError, match=message):
        save_hf(Llama(small_cfg()), tmp_path / "c", max_shard_size=size)
    assert not (tmp_path / "c").exists()


def test_shard_sizes_respected(tmp_path):
    model = randomize(Llama(small_cfg()))
    save_hf(model, tmp_path / "c", max_shard_size="12KB")
    idx = json.loads((tmp_path / "c" / "model.safetensors.index.json").read_text())
    biggest = max(p.numel() * 4 for p in model.parameters())
    for f in set(idx["weight_map"].values()):
        with safe_open(tmp_path / "c" / f, "pt") as st:
            size = sum(st.get_tensor(k).numel() * 4 for k in st.keys())
            assert size <= max(12_000, biggest)
    assert idx["metadata"]["total_size"] == model.num_params() * 4
    assert torch.equal(load_hf(tmp_path / "c").layers[1].feed_forward.w2.weight, model.layers[1].feed_forward.w2.weight)
