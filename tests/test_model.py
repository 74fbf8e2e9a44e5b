"""The model chapters (norm, rope, attention, mlp, model) against references no one here wrote: transformers' Llama,
PyTorch's built-ins, and the model's own full forward pass."""
import math

import pytest
import torch
import torch.nn.functional as F

from transformers import LlamaConfig as HFLlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb  # noqa: E402

from minillm.attention import Attention, KVCache, attend, causal_mask, naive_attention, repeat_kv  # noqa: E402
from minillm.config import PRESETS, LlamaConfig  # noqa: E402
from minillm.hf import config_to_hf, state_dict_to_hf  # noqa: E402
from minillm.mlp import FeedForward, llama_ffn_dim, swiglu  # noqa: E402
from minillm.model import Block, Llama, lm_loss  # noqa: E402
from minillm.norm import RMSNorm  # noqa: E402
from minillm.rope import apply_rope, half_to_interleaved, interleaved_to_half, rope_cache  # noqa: E402


def randomize(model, std=0.3):
    "Every parameter random, norm gains included (all-ones gains would hide swapped norms)."
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.normal_(1.0, 0.2)
            else:
                p.normal_(0.0, std)
    return model


def twin(model):
    "transformers' LlamaForCausalLM holding the same weights, copied through minillm.hf's name mapping."
    hf = LlamaForCausalLM(HFLlamaConfig(**config_to_hf(model.cfg))).eval()
    missing, unexpected = hf.load_state_dict(state_dict_to_hf(model.state_dict(), model.cfg.tie_embeddings), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # a tied head is the embedding itself
    if model.cfg.tie_embeddings:
        assert hf.lm_head.weight is hf.model.embed_tokens.weight
    return hf


# ---------------------------------------------------------------------------------------------------------- RMSNorm
@pytest.mark.parametrize("shape", [(3, 7, 33), (1, 1, 5), (2, 4096)])
@pytest.mark.parametrize("eps", [1e-5, 1e-6])
def test_rmsnorm_matches_transformers(shape, eps):
    x = torch.randn(shape) * 4 + 0.5
    ours, ref = RMSNorm(shape[-1], eps), LlamaRMSNorm(shape[-1], eps)
    with torch.no_grad():
        ours.weight.normal_(1, 0.3)
        ref.weight.copy_(ours.weight)
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(ours(x), torch.nn.functional.rms_norm(x, (shape[-1],), ours.weight, eps))
        # bf16: bit for bit, including the order of the final cast and the gain
        ours16, ref16 = ours.bfloat16(), ref.bfloat16()
        assert torch.equal(ours16(x.bfloat16()), ref16(x.bfloat16()))
        assert ours16(x.bfloat16()).dtype == torch.bfloat16


def test_rmsnorm_reset_parameters_and_meta():
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.fill_(3.0)
    norm.reset_parameters()
    assert torch.equal(norm.weight.detach(), torch.ones(8))
    with torch.device("meta"):
        assert RMSNorm(8).weight.is_meta


# ------------------------------------------------------------------------------------------------------------ RoPE
@pytest.mark.parametrize("head_dim,theta", [(8, 10000.0), (64, 10000.0), (18, 500.0), (128, 1e6)])
def test_rope_cache_matches_transformers(head_dim, theta):
    T = 37
    hf_cfg = HFLlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, max_position_embeddings=T, rope_theta=theta)
    rotary = LlamaRotaryEmbedding(hf_cfg)
    cos, sin = rope_cache(head_dim, T, theta)
    assert cos.shape == sin.shape == (T, head_dim // 2) and cos.dtype == torch.float32
    hf_cos, hf_sin = rotary(torch.zeros(1), torch.arange(T)[None])
    assert torch.equal(torch.cat([cos, cos], -1), hf_cos[0])
    assert torch.equal(torch.cat([sin, sin], -1), hf_sin[0])


@pytest.mark.parametrize("B,T,H,D", [(1, 1, 1, 2), (3, 11, 5, 14), (2, 33, 4, 64)])
def test_apply_rope_matches_transformers(B, T, H, D):
    cos, sin = rope_cache(D, 64, 777.0)
    q, k = torch.randn(B, T, H, D), torch.randn(B, T, H, D)
    start = 5
    hf_cfg = HFLlamaConfig(hidden_size=D * H, num_attention_heads=H, max_position_embeddings=64, rope_theta=777.0)
    hf_cos, hf_sin = LlamaRotaryEmbedding(hf_cfg)(q, torch.arange(start, start + T)[None])
    hf_q, hf_k = apply_rotary_pos_emb(q, k, hf_cos, hf_sin, unsqueeze_dim=2)
    torch.testing.assert_close(apply_rope(q, cos[start:start + T], sin[start:start + T]), hf_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(apply_rope(k, cos[start:start + T], sin[start:start + T]), hf_k, rtol=0, atol=1e-6)
    # computed in float32 and returned in the input dtype
    out16 = apply_rope(q.bfloat16(), cos[:T], sin[:T])
    assert out16.dtype == torch.bfloat16
    assert torch.equal(out16, apply_rope(q.bfloat16().float(), cos[:T], sin[:T]).bfloat16())


def test_rope_cache_device_and_errors():
    with torch.device("meta"):
        cos, _ = rope_cache(8, 4)
    assert cos.is_meta
    with pytest.raises(ValueError, match="head_dim=7"):
        rope_cache(7, 4)


def _rope_interleaved(x, cos, sin):
    "Meta's layout: pairs (2j, 2j+1), rotated by the same angles apply_rope uses for (j, j + d/2)."
    x0, x1 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), -1).flatten(-2)


@pytest.mark.parametrize("n_heads,head_dim,cols", [(1, 2, 3), (4, 8, 16), (3, 14, 5), (8, 64, 1)])
def test_rope_permutations(n_heads, head_dim, cols):
    w = torch.randn(n_heads * head_dim, cols)
    assert torch.equal(half_to_interleaved(interleaved_to_half(w, n_heads), n_heads), w)
    assert torch.equal(interleaved_to_half(half_to_interleaved(w, n_heads), n_heads), w)
    b = torch.randn(n_heads * head_dim)  # biases (1-d) permute the same way
    assert torch.equal(interleaved_to_half(b, n_heads), interleaved_to_half(b[:, None], n_heads)[:, 0])
    # rotating in one layout after permuting equals rotating in the other, channels reordered within each head
    T = 6
    cos, sin = rope_cache(head_dim, T)
    x = torch.randn(2, T, cols)
    q_inter = _rope_interleaved((x @ w.T).view(2, T, n_heads, head_dim), cos, sin)
    q_half = apply_rope((x @ interleaved_to_half(w, n_heads).T).view(2, T, n_heads, head_dim), cos, sin)
    perm = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    torch.testing.assert_close(q_half, q_inter[..., perm])


def test_rope_permutation_matches_transformers_conversion():
    "The permutation transformers' convert_llama_weights_to_hf.py applies to Meta's q/k weights."
    n_heads, dim = 4, 32
    w = torch.randn(dim, dim)
    ref = w.view(n_heads, dim // n_heads // 2, 2, dim).transpose(1, 2).reshape(dim, dim)
    assert torch.equal(interleaved_to_half(w, n_heads), ref)


def test_rope_permutation_errors():
    with pytest.raises(ValueError, match="n_heads=3"):
        interleaved_to_half(torch.randn(8, 4), 3)
    with pytest.raises(ValueError, match="even head_dim"):
        half_to_interleaved(torch.randn(12, 4), 4)


# ------------------------------------------------------------------------------------------------------- attention
def _loop_attention(q, k, v, q_offset):
    "Reference written as loops over heads and queries: softmax over keys 0..q_offset+i."
    B, H, Tq, D = q.shape
    n_rep = H // k.shape[1]
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                kk, vv = k[b, h // n_rep, :q_offset + i + 1], v[b, h // n_rep, :q_offset + i + 1]
                w = torch.softmax(kk @ q[b, h, i] / math.sqrt(D), dim=0)
                out[b, h, i] = w @ vv
    return out


@pytest.mark.parametrize("B,H,KV,Tq,Tk,D", [(1, 1, 1, 1, 1, 2), (2, 6, 3, 7, 7, 10), (3, 5, 1, 1, 13, 8),
                                             (2, 4, 2, 5, 12, 24), (1, 8, 8, 33, 33, 6), (2, 12, 4, 3, 3, 64)])
def test_attention_naive_sdpa_and_loops_agree(B, H, KV, Tq, Tk, D):
    q, k, v = torch.randn(B, H, Tq, D), torch.randn(B, KV, Tk, D), torch.randn(B, KV, Tk, D)
    ref = _loop_attention(q, k, v, Tk - Tq)
    torch.testing.assert_close(naive_attention(q, k, v), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attend(q, k, v), ref, rtol=1e-5, atol=1e-5)
    full = naive_attention(q, k, v, causal=False)
    torch.testing.assert_close(attend(q, k, v, causal=False), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        full, F.scaled_dot_product_attention(q, repeat_kv(k, H // KV), repeat_kv(v, H // KV)), rtol=1e-5, atol=1e-5)


def test_attend_bf16():
    q, k, v = torch.randn(2, 4, 9, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
    out = attend(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), naive_attention(q, k, v), rtol=0, atol=3e-2)


def test_causal_mask_alignment():
    assert torch.equal(causal_mask(3, 3), torch.ones(3, 3, dtype=torch.bool).tril())
    assert torch.equal(causal_mask(1, 5), torch.ones(1, 5, dtype=torch.bool))
    assert causal_mask(2, 5).tolist() == [[True] * 4 + [False], [True] * 5]
    with pytest.raises(ValueError, match="q_len=4"):
        causal_mask(4, 2)


def test_repeat_kv():
    x = torch.randn(2, 3, 5, 4)
    assert torch.equal(repeat_kv(x, 4), x.repeat_interleave(4, dim=1))
    assert repeat_kv(x, 1) is x


def test_kv_cache_update_and_errors():
    cache = KVCache(2, 3, 10, 4)
    k, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    ks, vs = cache.update(k, v, 0)
    assert ks.shape == (2, 3, 4, 4) and torch.equal(ks, k) and torch.equal(vs, v)
    ks, vs = cache.update(k[:, :, :2], v[:, :, :2], 4)
    assert ks.shape == (2, 3, 6, 4) and torch.equal(ks[:, :, 4:], k[:, :, :2])
    assert cache.max_len == 10
    with pytest.raises(ValueError, match="max_len=10"):
        cache.update(k, v, 8)
    with pytest.raises(ValueError, match="do not fit"):
        cache.update(torch.randn(1, 3, 1, 4), torch.randn(1, 3, 1, 4), 0)
    with pytest.raises(ValueError, match="do not fit"):
        cache.update(torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4), 0)


@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_attention_module_cache_paths(n_heads, n_kv_heads):
    cfg = LlamaConfig(vocab_size=16, dim=n_heads * 6, n_layers=1, n_heads=n_heads, n_kv_heads=n_kv_heads, ffn_dim=8,
                      max_seq_len=32)
    attn = randomize(Attention(cfg), std=0.2)
    assert attn.rope is apply_rope and attn.attend is attend  # the seams the kernel chapter replaces
    x = torch.randn(2, 11, cfg.dim)
    cos, sin = rope_cache(cfg.head_dim, 32)
    with torch.no_grad():
        full = attn(x, cos[:11], sin[:11])
        for chunks in ([(0, 11)], [(t, t + 1) for t in range(11)], [(0, 4), (4, 5), (5, 9), (9, 11)]):
            cache = KVCache(2, n_kv_heads, 16, cfg.head_dim)
            out = torch.cat([attn(x[:, a:b], cos[a:b], sin[a:b], cache, a) for a, b in chunks], 1)
            torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------- MLP
def test_feed_forward_matches_transformers():
    from transformers.models.llama.modeling_llama import LlamaMLP

    cfg = LlamaConfig.from_name("debug")
    ff = randomize(FeedForward(cfg))
    assert ff.swiglu is swiglu
    hf = LlamaMLP(HFLlamaConfig(hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim))
    with torch.no_grad():
        hf.gate_proj.weight.copy_(ff.w1.weight)
        hf.up_proj.weight.copy_(ff.w3.weight)
        hf.down_proj.weight.copy_(ff.w2.weight)
        x = torch.randn(3, 5, cfg.dim)
        torch.testing.assert_close(ff(x), hf(x), rtol=1e-5, atol=1e-5)


def test_llama_ffn_dim():
    assert llama_ffn_dim(2048) == 5632
    assert llama_ffn_dim(4096) == 11008
    assert llama_ffn_dim(8192, multiple_of=4096, ffn_dim_multiplier=1.3) == 28672  # Llama 2 70B


# ---------------------------------------------------------------------------------------------------------- Llama
PARITY = [  # (n_heads, n_kv_heads, tie, rope_theta, norm_eps): MHA, GQA, MQA; tied and untied
    (4, 4, False, 10000.0, 1e-5),
    (4, 2, True, 500.0, 1e-6),
    (6, 1, False, 1e6, 1e-5),
    (8, 2, False, 10000.0, 1e-6),
    (2, 1, True, 77.0, 1e-5),
]


@pytest.mark.parametrize("n_heads,n_kv_heads,tie,theta,eps", PARITY)
@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
def test_logit_and_loss_parity_with_transformers(n_heads, n_kv_heads, tie, theta, eps, attn_impl):
    cfg = LlamaConfig(vocab_size=101, dim=n_heads * 8, n_layers=3, n_heads=n_heads, n_kv_heads=n_kv_heads, ffn_dim=40,
                      max_seq_len=64, rope_theta=theta, norm_eps=eps, tie_embeddings=tie)
    model = randomize(Llama(cfg), std=0.15).eval()
    hf = twin(model)
    hf.config._attn_implementation = attn_impl
    tokens = torch.randint(0, cfg.vocab_size, (3, 45))
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
        assert ours.shape == (3, 45, 101) and ours.dtype == torch.float32
        diff = (ours - theirs).abs().max().item()
        print(f"max |Δlogit| {n_heads}/{n_kv_heads} heads tie={tie} theta={theta} eps={eps} {attn_impl}: {diff:.3e} (max |logit| {ours.abs().max():.1f})")
        assert diff <= 1e-5
        targets = torch.cat([tokens[:, 1:], torch.full((3, 1), -100)], 1)
        loss = model(tokens, targets)
        assert loss.dtype == torch.float32 and loss.ndim == 0
        assert abs(loss.item() - hf(tokens, labels=tokens).loss.item()) <= 1e-5


def test_parity_with_bf16_reference_stays_close():
    "In bf16 both implementations round differently (RoPE is float32 here), but stay close to the float32 answer."
    cfg = LlamaConfig.from_name("debug")
    model = randomize(Llama(cfg), std=0.05)
    tokens = torch.randint(0, cfg.vocab_size, (2, 20))
    with torch.no_grad():
        ref = model(tokens)
        out16 = model.to(torch.bfloat16)(tokens)
    assert out16.dtype == torch.float32
    assert model.rope_cos.dtype == torch.float32
    assert (out16 - ref).abs().max() < 0.1 * ref.abs().max()


@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_cache_decode_equals_full_forward(n_heads, n_kv_heads):
    cfg = LlamaConfig(vocab_size=64, dim=32, n_layers=2, n_heads=n_heads, n_kv_heads=n_kv_heads, ffn_dim=48,
                      max_seq_len=40)
    model = randomize(Llama(cfg), std=0.2)
    tokens = torch.randint(0, 64, (2, 23))
    with torch.no_grad():
        full = model(tokens)
        for chunks in ([(t, t + 1) for t in range(23)], [(0, 7), (7, 8), (8, 15), (15, 23)]):
            cache = model.new_cache(2, max_len=30)
            out = torch.cat([model(tokens[:, a:b], cache=cache, start_pos=a) for a, b in chunks], 1)
            torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-5)


def _greedy(model, prompt, n):
    cache = model.new_cache(prompt.shape[0])
    logits, out = model(prompt, cache=cache), prompt
    for pos in range(prompt.shape[1], prompt.shape[1] + n):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], 1)
        logits = model(nxt, cache=cache, start_pos=pos)
    return out


@pytest.mark.parametrize("tie", [False, True])
def test_cache_greedy_matches_transformers_generate(tie):
    cfg = LlamaConfig(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=64,
                      tie_embeddings=tie)
    model = randomize(Llama(cfg), std=0.5)
    hf = twin(model)
    prompt = torch.randint(3, 97, (2, 6))
    with torch.no_grad():
        ours = _greedy(model, prompt, 20)
        theirs = hf.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0,
                             attention_mask=torch.ones_like(prompt))
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_param_counts_on_meta(name):
    cfg = LlamaConfig.from_name(name)
    with torch.device("meta"):
        model = Llama(cfg)
    assert all(p.is_meta for p in model.parameters())
    assert model.num_params() == cfg.n_params
    assert len(list(model.parameters())) == 2 + 9 * cfg.n_layers + (0 if cfg.tie_embeddings else 1)


def test_published_param_counts():
    with torch.device("meta"):
        assert Llama(LlamaConfig.from_name("tinyllama-1.1b")).num_params() == 1_100_048_384
        assert Llama(LlamaConfig.from_name("llama2-7b")).num_params() == 6_738_415_616


def test_hf_param_count_agrees():
    for tie in (False, True):
        cfg = LlamaConfig.from_name("debug", tie_embeddings=tie)
        hf = LlamaForCausalLM(HFLlamaConfig(**config_to_hf(cfg)))
        assert sum(p.numel() for p in hf.parameters()) == Llama(cfg).num_params() == cfg.n_params


@pytest.mark.parametrize("tie", [False, True])
def test_meta_to_empty_init_weights(tie):
    cfg = LlamaConfig(vocab_size=300, dim=64, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=160, max_seq_len=48,
                      tie_embeddings=tie, init_std=0.05)
    with torch.device("meta"):
        model = Llama(cfg)
    model.to_empty(device="cpu")
    model.init_weights()
    assert (model.output.weight is model.tok_embeddings.weight) == tie
    assert model.num_params() == cfg.n_params
    std = lambda t: t.detach().float().std().item()  # noqa: E731
    assert abs(std(model.tok_embeddings.weight) - 0.05) < 0.005
    assert abs(std(model.layers[1].attention.wk.weight) - 0.05) < 0.005
    assert abs(std(model.layers[2].attention.wo.weight) - 0.05 / math.sqrt(8)) < 0.003
    assert abs(std(model.layers[3].feed_forward.w2.weight) - 0.05 / math.sqrt(8)) < 0.003
    assert torch.equal(model.layers[0].ffn_norm.weight.detach(), torch.ones(64))
    assert torch.equal(model.norm.weight.detach(), torch.ones(64))
    cos, sin = rope_cache(cfg.head_dim, cfg.max_seq_len)
    assert torch.equal(model.rope_cos, cos) and torch.equal(model.rope_sin, sin)
    assert "rope_cos" not in model.state_dict()  # non-persistent
    loss = model(torch.randint(0, 300, (2, 48)), torch.randint(0, 300, (2, 48)))
    assert abs(loss.item() - math.log(300)) < 0.3
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_loss_seam_and_ignore_index():
    cfg = LlamaConfig.from_name("debug")
    model = randomize(Llama(cfg), std=0.1)
    assert model.loss_fn is lm_loss
    tokens = torch.randint(0, cfg.vocab_size, (2, 12))
    targets = torch.randint(0, cfg.vocab_size, (2, 12))
    targets[0, :5] = -100
    with torch.no_grad():
        logits = model(tokens)
        keep = targets != -100
        ref = F.cross_entropy(logits[keep], targets[keep])
        torch.testing.assert_close(model(tokens, targets), ref)
        seen = []
        model.loss_fn = lambda h, w, t: seen.append((h.shape, w is model.output.weight)) or torch.tensor(0.0)
        model(tokens, targets)
    assert seen == [((2, 12, cfg.dim), True)]


def test_block_names():
    names = {n for n, _ in Block(LlamaConfig.from_name("debug")).named_parameters()}
    assert names == {"attention_norm.weight", "attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
                     "attention.wo.weight", "ffn_norm.weight", "feed_forward.w1.weight", "feed_forward.w3.weight",
                     "feed_forward.w2.weight"}


@pytest.fixture(scope="module")
def toy():
    return Llama(LlamaConfig.from_name("debug"))  # vocab 512, max_seq_len 64, 2 layers


@pytest.mark.parametrize("call,message", [
    (lambda m: m(torch.zeros(1, 65, dtype=torch.long)), "exceed max_seq_len=64"),
    (lambda m: m(torch.zeros(1, 3, dtype=torch.long), cache=m.new_cache(1), start_pos=62), "positions 62..64"),
    (lambda m: m(torch.tensor([[0, 512]])), "vocab_size=512"),
    (lambda m: m(torch.tensor([[-1, 3]])), "from -1 to 3"),
    (lambda m: m(torch.zeros(1, 4)), "torch.float32"),
    (lambda m: m(torch.zeros(1, 4, dtype=torch.bool)), "torch.bool"),
    (lambda m: m(torch.tensor([1, 2, 3])), "shape (3,)"),
    (lambda m: m(torch.zeros(1, 2, 3, dtype=torch.long)), "shape (1, 2, 3)"),
    (lambda m: m(torch.zeros(1, 0, dtype=torch.long)), "an empty batch"),
    (lambda m: m([[1, 2]]), "got list"),
    (lambda m: m(torch.zeros(1, 3, dtype=torch.long), start_pos=2), "needs a cache"),
    (lambda m: m(torch.zeros(1, 3, dtype=torch.long), cache=m.new_cache(1), start_pos=-1), "start_pos=-1"),
    (lambda m: m(torch.zeros(1, 3, dtype=torch.long), cache=m.new_cache(1)[:1]), "n_layers=2"),
    (lambda m: m(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)), "targets shape (2, 4)"),
    (lambda m: m(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)), "targets must be an integer"),
    (lambda m: m(torch.zeros(2, 3, dtype=torch.long), cache=m.new_cache(1)), "do not fit"),
    (lambda m: m.new_cache(1, max_len=65), "max_len=65"),
])
def test_model_input_errors(toy, call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        call(toy)


def test_int32_tokens_and_targets_accepted(toy):
    tokens = torch.randint(0, 512, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(toy(tokens.int()), toy(tokens))
        torch.testing.assert_close(toy(tokens.int(), tokens.int()), toy(tokens, tokens))


@pytest.mark.parametrize("overrides,message", [
    (dict(dim=100, n_heads=3), "not divisible by n_heads=3"),
    (dict(n_kv_heads=3), "n_kv_heads=3"),
    (dict(dim=120, n_heads=8), "odd"),
    (dict(vocab_size=0), "vocab_size=0"),
    (dict(norm_eps=-1.0), "norm_eps=-1.0"),
    (dict(kernels="cuda"), "kernels='cuda'"),
    (dict(dims=64), "did you mean 'dim'"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        LlamaConfig.from_name("toy", **overrides)
