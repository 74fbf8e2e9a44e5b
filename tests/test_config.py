import pytest

from minillm.config import PRESETS, LlamaConfig

EXPECTED_PARAMS = {"tinyllama-1.1b": 1_100_048_384, "llama2-7b": 6_738_415_616}


def test_tinyllama_numbers():
    c = LlamaConfig.from_name("tinyllama-1.1b")
    assert (c.vocab_size, c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_dim) == (32000, 2048, 22, 32, 4, 5632)
    assert (c.head_dim, c.n_rep, c.max_seq_len, c.rope_theta, c.norm_eps, c.tie_embeddings) == (64, 8, 2048, 10000.0, 1e-5, False)
    assert round(c.flops_per_token(2048) / 1e9, 3) == 7.314


@pytest.mark.parametrize("name,n", EXPECTED_PARAMS.items())
def test_param_counts(name, n):
    assert LlamaConfig.from_name(name).n_params == n


def test_tied_head_counted_once_and_in_flops():
    tied = LlamaConfig.from_name("debug", tie_embeddings=True)
    untied = LlamaConfig.from_name("debug")
    assert untied.n_params - tied.n_params == tied.vocab_size * tied.dim
    assert tied.flops_per_token() == untied.flops_per_token()  # the head is a matmul either way


def test_overrides_and_round_trip():
    c = LlamaConfig.from_name("toy", n_layers=2, rope_theta=500000.0)
    assert c.n_layers == 2 and c.rope_theta == 500000.0 and c.name == "toy"
    assert LlamaConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds(name):
    c = LlamaConfig.from_name(name)
    assert c.n_params == sum(c.param_counts().values()) > 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(dims=64), "unknown LlamaConfig field 'dims' \\(did you mean 'dim'\\?\\); valid fields: name, vocab_size"),
    (dict(dim=100, n_heads=3), "dim=100 is not divisible by n_heads=3"),
    (dict(n_kv_heads=3), "n_heads=4 is not divisible by n_kv_heads=3.*valid n_kv_heads: 1, 2, 4"),
    (dict(dim=120, n_heads=8), "head_dim=15 .* is odd"),
    (dict(n_layers=0), "n_layers=0 must be a positive integer"),
    (dict(vocab_size=3.5), "vocab_size=3.5 must be a positive integer"),
    (dict(norm_eps=-1.0), "norm_eps=-1.0 must be a positive number"),
    (dict(tie_embeddings="yes"), "tie_embeddings='yes' must be True or False"),
    (dict(kernels="cuda"), "kernels='cuda' is not one of auto, torch, triton"),
])
def test_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LlamaConfig.from_name("toy", **kwargs)


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown preset 'tinyllama' \\(did you mean 'tinyllama-1.1b'\\?\\); valid presets: toy, debug"):
        LlamaConfig.from_name("tinyllama")
