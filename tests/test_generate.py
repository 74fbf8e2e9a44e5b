"""Sampling rules and KV-cache generation."""
import pytest
import torch

from minillm.config import LlamaConfig
from minillm.generate import complete, generate, sample_next, top_k_filter, top_p_filter
from minillm.model import Llama


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Llama(LlamaConfig.from_name("debug")).eval()


@pytest.mark.parametrize("k", [1, 3, 17, 100])
def test_top_k_keeps_exactly_k(k):
    logits = torch.randn(4, 100)
    logits[:, :10] = 5.0  # ties: still exactly k
    kept = top_k_filter(logits, k) > float("-inf")
    assert (kept.sum(-1) == k).all()
    kth = logits.topk(k, dim=-1).values[:, -1:]
    assert (logits[kept] >= kth.expand_as(logits)[kept]).all()


def nucleus(probs, p):
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    total, keep = 0.0, set()
    for i in order:
        keep.add(i)
        total += probs[i]
        if total >= p:
            break
    return keep


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_keeps_the_smallest_nucleus(p):
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        logits = torch.randn(1, 50, generator=gen) * 3
        probs = logits.double().softmax(-1)[0].tolist()
        kept = set((top_p_filter(logits.double(), p)[0] > float("-inf")).nonzero().flatten().tolist())
        assert kept == nucleus(probs, p)
        assert sum(probs[i] for i in kept) >= p - 1e-12


def test_temperature_zero_is_argmax(model):
    logits = torch.randn(5, 512)
    assert torch.equal(sample_next(logits, temperature=0), logits.argmax(-1))
    prompt = torch.randint(0, 512, (1, 4))
    out = generate(model, prompt, 6, temperature=0)
    seq = prompt
    for _ in range(6):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_sampling_is_seeded_and_follows_the_filters(model):
    a = generate(model, [1, 2, 3], 20, top_k=5, generator=torch.Generator().manual_seed(0))
    b = generate(model, [1, 2, 3], 20, top_k=5, generator=torch.Generator().manual_seed(0))
    c = generate(model, [1, 2, 3], 20, top_k=5, generator=torch.Generator().manual_seed(1))
    assert a == b and a != c and a[:3] == [1, 2, 3] and len(a) == 23
    logits = torch.randn(1, 512).expand(3000, -1)
    draws = sample_next(logits, top_k=3, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) <= set(logits[0].topk(3).indices.tolist())
    draws = sample_next(logits, temperature=0.01, generator=torch.Generator().manual_seed(0))
    assert (draws == logits[0].argmax()).float().mean() > 0.99


@pytest.mark.parametrize("settings", [dict(temperature=0), dict(temperature=1.0, top_p=0.9), dict(temperature=0.7, top_k=8)])
def test_cache_equals_recomputation(model, settings):
    prompt = torch.randint(0, 512, (3, 7))
    n = 130  # past the 64-token context: the window slides
    cached = generate(model, prompt, n, generator=torch.Generator().manual_seed(5), **settings)
    full = generate(model, prompt, n, generator=torch.Generator().manual_seed(5), use_cache=False, **settings)
    assert torch.equal(cached, full) and cached.shape == (3, 7 + n)


def test_stops_at_eos(model):
    prompt = torch.randint(0, 512, (2, 4))
    greedy = generate(model, prompt, 30, temperature=0)
    eos = int(greedy[0, 6])
    out = generate(model, prompt, 30, temperature=0, eos_id=eos)
    row0 = out[0, 4:].tolist()
    assert row0[row0.index(eos):] == [eos] * (len(row0) - row0.index(eos))  # finished rows only repeat EOS
    if eos not in greedy[1, 4:].tolist():
        assert out.shape[1] == greedy.shape[1]  # the other row keeps going
    lst = generate(model, prompt[0].tolist(), 30, temperature=0, eos_id=eos)
    assert lst[-1] == eos and eos not in lst[4:-1]


def test_bad_arguments(model):
    for kw, msg in [(dict(temperature=-1), "temperature"), (dict(top_k=0), "top_k"), (dict(top_p=0), "top_p"),
                    (dict(top_p=1.5), "top_p")]:
        with pytest.raises(ValueError, match=msg):
            generate(model, [1, 2], 3, **kw)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [], 3)
    with pytest.raises(ValueError, match="more than the model's max_seq_len=64"):
        generate(model, list(range(65)), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, [1], -1)


def test_complete_decodes_text(model):
    from minillm.tokenizer import Tokenizer

    tok = Tokenizer.train(["def f(x):\n    return x + 1\n" * 50], 262)
    a = complete(model, tok, "def ", 10, seed=1)
    assert isinstance(a, str) and a == complete(model, tok, "def ", 10, seed=1)
