"""Every exercise check passes the worked solution in `solutions/` and fails a plausible wrong answer with a message
that names the check, the input it failed on and what differs."""
import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from minillm import check

SOLUTIONS = Path(__file__).resolve().parent.parent / "solutions"


def chapter(name):
    "The solutions module of one chapter (its file is named after the notebook, so it is loaded by path)."
    spec = importlib.util.spec_from_file_location(f"solutions_{name}", SOLUTIONS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


C00, C01, C02, C03, C04, C05, C06, C07, C08, C09, C10 = (chapter(n) for n in (
    "00_config", "01_tokenizer", "02_data", "03_rmsnorm", "04_rope", "05_attention", "06_swiglu", "07_model", "08_hf",
    "09_train", "10_generate"))
C11A, C11B, C11C, C11D, C11E, C11F = (chapter(n) for n in (
    "11a_kernels_rmsnorm", "11b_kernels_rope", "11c_kernels_swiglu", "11d_kernels_cross_entropy",
    "11e_kernels_attention", "11f_kernels_switch"))
C12, C13, C14 = chapter("12_distributed"), chapter("13_pretrain"), chapter("14_export")
C02B = chapter("02b_prepare")
C21 = chapter("21_finetune")
C01B, C02C, C09B = chapter("01b_tokenizer_files"), chapter("02_corpora"), chapter("09b_metrics")
C12B, C90, C92 = chapter("12b_checkpoint"), chapter("90_cli"), chapter("92_files")
C15H = chapter("15_evaluate_harness")


# Wrong answers: the mistakes a learner is likely to make. Each row: chapter module, check name, a wrong function,
# and a piece of text the failure message must contain (it names the input the answer fails on).
def _bpe_merge_overlapping(ids, pair, new_id):  # forgets to skip the second token of a merged pair
    out, i = [], 0
    while i < len(ids):
        out.append(new_id if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair else ids[i])
        i += 1
    return out


def _bpe_encode_leftmost(text, vocab):  # merges the leftmost known pair instead of the lowest-ranked one
    import regex
    rank = {t: i for i, t in enumerate(vocab)}
    out = []
    for chunk in regex.findall(C01.GPT4_SPLIT_PATTERN, text):
        parts = [bytes([b]) for b in chunk.encode()]
        while (i := next((i for i in range(len(parts) - 1) if parts[i] + parts[i + 1] in rank), None)) is not None:
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        out += [rank[p] for p in parts]
    return out


def _rmsnorm_eps_outside(x, w, eps):
    xf = x.float()
    return w * (xf / (xf.pow(2).mean(-1, keepdim=True).sqrt() + eps)).to(x.dtype)


def _rope_interleaved(x, cos, sin):  # pairs neighbouring channels (Meta's layout) instead of (i, i + d/2)
    xf = x.float()
    x0, x1 = xf[..., 0::2], xf[..., 1::2]
    cos, sin = cos[:, None], sin[:, None]
    return torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], -1).flatten(-2).to(x.dtype)


def _attention_unmasked(q, k, v):
    n_rep = q.shape[2] // k.shape[2]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    k, v = k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)
    return ((q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1) @ v).transpose(1, 2)


def _block_post_norm(block, x, cos, sin):
    h = block.attention_norm(x + block.attention(x, cos, sin))
    return block.ffn_norm(h + block.feed_forward(h))


def _big_endian_header(path):
    import json
    import struct
    raw = open(path, "rb").read()
    return json.loads(raw[8:8 + struct.unpack(">Q", raw[:8])[0]])


def _adamw_no_bias_correction(w, g, m, v, t, lr, betas, eps, wd):
    m, v = betas[0] * m + (1 - betas[0]) * g, betas[1] * v + (1 - betas[1]) * g * g
    return w * (1 - lr * wd) - lr * m / (v.sqrt() + eps), m, v


def _top_p_one_too_few(probs, p):  # stops before the token that takes the mass past p
    sorted_probs, order = probs.sort(-1, descending=True)
    sorted_probs = sorted_probs.masked_fill(sorted_probs.cumsum(-1) > p, 0.0)
    sorted_probs[..., 0] = torch.where(sorted_probs.sum(-1) == 0, probs.max(-1).values, sorted_probs[..., 0])
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(-1, keepdim=True)


def _rmsnorm_backward_no_projection(x, w, dy, eps):
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return r * dy * w, (dy * x * r).reshape(-1, x.shape[-1]).sum(0)


def _tiled_no_rescale(q, k, v, block):
    T, d = q.shape
    out = torch.empty_like(q)
    for qs in range(0, T, block):
        qb, l, acc = q[qs:qs + block], 0, 0
        for ks in range(0, min(qs + block, T), block):
            s = qb @ k[ks:ks + block].T / math.sqrt(d)
            s = s.masked_fill(torch.arange(ks, ks + s.shape[1])[None] > torch.arange(qs, qs + s.shape[0])[:, None], -torch.inf)
            p = torch.exp(s - s.max(-1, keepdim=True).values)  # each block's own maximum, never reconciled
            l, acc = l + p.sum(-1), acc + p @ v[ks:ks + block]
        out[qs:qs + block] = acc / l[:, None]
    return out


def _install_without_loss(model, rope, swiglu, loss_fn):
    C11F.install_seams(model, rope, swiglu, model.loss_fn)


def _attention_backward_no_correction(q, k, v, out, lse, dout):  # dS = P ∘ dP: forgets to subtract rowsum(dO ∘ O)
    T, d = q.shape
    s = (q @ k.T / math.sqrt(d)).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -torch.inf)
    p = torch.exp(s - lse[:, None])
    ds = p * (dout @ v.T)
    return ds @ k / math.sqrt(d), ds.T @ q / math.sqrt(d), p.T @ dout


def _auto_ignores_the_device(kernels, device, has_triton, interpret):  # 'auto' picks Triton wherever it is installed
    if kernels == "auto":
        return "triton" if has_triton else "torch"
    return C11F.resolve_kernels(kernels, device, has_triton, interpret)


def _run_catching_everything(args):  # a bug reads as bad input: its traceback is lost
    import sys
    try:
        return C90.run_command(args)
    except Exception as e:
        print(f"minillm {args.command}: error: {e}", file=sys.stderr)
        return 2


def _shard_drawn_alone(shape, seed, rank, world_size):  # every rank draws its piece from the same seed
    full_rows = -(-shape[0] // world_size)
    rows = max(0, min(full_rows, shape[0] - rank * full_rows))
    return torch.randn((rows, *shape[1:]), generator=torch.Generator().manual_seed(seed))


def _splits_first_documents(keys, val_fraction, min_val):  # forces the first documents to val, not the first units
    return ["val" if i < min_val else s for i, s in enumerate(C02C.document_splits(keys, val_fraction, 0))]


def _limit_by_characters(texts, max_documents, max_bytes):  # counts characters, not UTF-8 bytes
    out = []
    for t in texts:
        if (max_documents is not None and len(out) >= max_documents) or (
                max_bytes is not None and sum(map(len, out)) + len(t) > max_bytes):
            break
        out.append(t)
    return out


def _smooth_every_step(losses):  # one value per step, the first windows short, instead of full windows only
    k = max(1, len(losses) // 20)
    return [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1]) for i in range(len(losses))]


def _metrics_all_rows(text, resume_step):  # keeps the rows after the resume step, which the run will write again
    return C09B.resumed_metrics(text, 10**9)


def _newest_folder(path):  # the newest step folder, complete or not, and never `latest`
    from pathlib import Path
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    steps = sorted([*path.glob("checkpoints/step-*"), *path.glob("step-*")])
    return steps[-1] if steps else None


def _prune_all_but_final(root, keep, final):  # leaves the hidden leftovers of a crashed save behind
    import shutil
    from pathlib import Path
    complete = sorted(p for p in Path(root).glob("step-*") if (p / "state.json").is_file())
    for old in complete[:-keep] if keep > 0 else []:
        if old != Path(final):
            shutil.rmtree(old)


def _write_in_place(path, data):  # opens the file itself: a crash or an error leaves it cut short
    with open(path, "wb") as f:
        f.write(data)


def _publish_by_copy(tmp, final):  # copies the files over: stale files of the old folder stay, tmp stays too
    import shutil
    shutil.copytree(tmp, final, dirs_exist_ok=True)


def _mfu_with_embedding(tps, cfg, seq_len, peak):
    return tps * (6 * cfg.n_params + 12 * cfg.n_layers * cfg.dim * seq_len) / (peak * 1e12)


WRONG = [
    (C00, "n_params", lambda cfg: C00.n_params(cfg) + (cfg.dim * cfg.vocab_size if cfg.tie_embeddings else 0), "tinystories-15m"),
    (C00, "flops_per_token", lambda cfg, T: 6 * (C00.n_params(cfg) - cfg.vocab_size * cfg.dim) + 12 * cfg.n_layers * cfg.dim * T, "tinystories-15m"),
    (C01, "bpe_merge", _bpe_merge_overlapping, "pair=(97, 116)"),
    (C01, "bpe_encode", _bpe_encode_leftmost, "text"),
    (C02, "pack", lambda docs, bos, eos: C02.pack(docs, bos, eos if eos is not None else 0), "eos=None"),
    (C02, "xy", lambda tokens, starts, seq_len: (C02.xy(tokens, starts, seq_len)[0],) * 2, "starts="),
    (C03, "rmsnorm", _rmsnorm_eps_outside, "eps=0.5"),
    (C03, "layer_norm", lambda x, w, b, eps: w * (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps) + b, "x of shape"),
    (C04, "apply_rope", _rope_interleaved, "positions 0..9"),
    (C04, "interleaved_to_half", lambda w, n: w.reshape(n, 2, -1, *w.shape[1:]).transpose(1, 2).reshape(w.shape), "n_heads=6"),
    (C05, "causal_attention", _attention_unmasked, "MHA"),
    (C05, "causal_mask", lambda q, k: torch.ones(q, k, dtype=torch.bool).tril(), "q_len=3, kv_len=8"),
    (C06, "swiglu", lambda x, w1, w3, w2: (F.silu(x @ w3.T) * (x @ w1.T)) @ w2.T, "ffn_dim=176"),
    (C06, "llama_ffn_dim", lambda d, m, x: m * (int((x or 1) * int(8 * d / 3)) // m), "dim=2048"),
    (C07, "lm_loss", lambda h, w, t: F.cross_entropy((h @ w.T).float().flatten(0, 1), t.flatten(), reduction="sum"), "vocab 50"),
    (C07, "block_forward", _block_post_norm, "'debug' block"),
    (C08, "to_hf_name", lambda n: C08.to_hf_name(n).replace("gate_proj", "TMP").replace("up_proj", "gate_proj").replace("TMP", "up_proj"), "feed_forward.w1"),
    (C08, "safetensors_header", _big_endian_header, "your function raised"),
    (C09, "lr_at", lambda s, lr, mn, w, S: C09.lr_at(s, lr, mn, w, S) if s >= w else lr * s / w, "step 0 of"),
    (C09, "adamw_step", _adamw_no_bias_correction, "step t=1"),
    (C10, "top_p", _top_p_one_too_few, "p=0.5"),
    (C10, "greedy", lambda model, prompt, n: C10.greedy(model, prompt, n)[:, prompt.shape[1]:], "shape"),
    (C11A, "rmsnorm_backward", _rmsnorm_backward_no_projection, "eps=1e-05"),
    (C11A, "triton_rmsnorm", lambda x, w, eps: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps), "x of shape (5, 64) float32 on"),
    (C11B, "rope_backward", lambda dy, cos, sin: C04.apply_rope(dy, cos, sin), "dy of shape"),
    (C11C, "swiglu_backward", lambda a, b, dy: (dy * b * torch.sigmoid(a), dy * F.silu(a)), "a, b of shape"),
    (C11C, "swiglu_function", lambda a, b: F.silu(a) * b, "keeps"),
    (C11D, "online_logsumexp", lambda x, chunk: torch.exp(x).sum(-1).log(), "values up to ~1050"),
    (C11D, "cross_entropy_grad", lambda lg, t: (lg.softmax(-1) - F.one_hot(t.clamp(min=0), lg.shape[-1]) * (t >= 0)[:, None]) / len(t), "2 targets of -100"),
    (C11B, "triton_rope", _rope_interleaved, "x of shape (2, 5, 3, 12) float32 on"),
    (C11E, "tiled_attention", _tiled_no_rescale, "block=4"),
    (C11E, "attention_backward", _attention_backward_no_correction, "q, k, v of shape (6, 8) float32"),
    (C11F, "install_seams", _install_without_loss, "calls per forward pass"),
    (C11F, "resolve_kernels", _auto_ignores_the_device, "kernels='auto', device='cpu', has_triton=True"),
    (C12, "data_parallel_grads", lambda m, x, y, W: [g * W for g in C12.data_parallel_grads(m, x, y, W)], "world_size=2"),
    (C12, "sharded_init", _shard_drawn_alone, "rank 1 of 2"),
    (C01B, "tokenizer_format", lambda head: "tokenizer.json" if head.lstrip().startswith(b'{"version"') or
     head.lstrip().startswith(b'{\n  "version"') else C01B.tokenizer_format(head), "config.json"),
    (C01B, "varint", lambda data, i: (data[i] & 0x7F, i + 1), "data=b'\\x96\\x01', i=0"),
    (C02C, "document_splits", _splits_first_documents, "units that repeat, val_fraction=0.0, min_val_documents=2"),
    (C02C, "limit_documents", _limit_by_characters, "accents and kanji"),
    (C09B, "smoothed_loss", _smooth_every_step, "a noisy falling curve (403 losses)"),
    (C09B, "resumed_metrics", _metrics_all_rows, "resume_step=50"),
    (C12B, "find_checkpoint", _newest_folder, "a newest checkpoint without state.json"),
    (C12B, "prune_checkpoints", _prune_all_but_final, "two leftovers"),
    (C15H, "harness_request", lambda tok, c, e: ([tok.bos_id] + tok.encode(c), tok.encode(e)),
     "context='The quick brown fox '"),  # encodes the two apart and leaves the context's trailing space on it
    (C15H, "request_loglikelihood", lambda m, c, e, n: C15H.request_loglikelihood(m, c, e, 10**6),
     "truncated on the left"),  # never truncates: a pair longer than the model's context
    (C90, "parse_count", lambda v: int(float(v.replace("_", ""))), "value='1e-3'"),
    (C90, "run_command", _run_catching_everything, "raises ZeroDivisionError (a bug)"),
    (C92, "write_atomic", _write_in_place, "second hard link"),
    (C92, "publish_dir", _publish_by_copy, "a new folder"),
    (C02B, "split_files", lambda s, n: [(round(len(s) * k / n), round(len(s) * (k + 1) / n)) for k in range(n)],
     "sizes=[5, 1, 1, 1, 1, 1], n=2"),  # splits by the number of files, not by bytes
    (C02B, "projected_hours", lambda b, r, c, n=1, e=1.0: b / (r * c * n) / 3600, "efficiency 0.9"),
    (C13, "mfu", _mfu_with_embedding, "tinyllama-1.1b"),
    (C13, "accum_steps", lambda G, m, W: G // (m * W), "world_size=3"),
    (C14, "q8_0", lambda w: (w.reshape(-1, 32).abs().amax(-1).div(128).half(), C14.q8_0(w)[1]), "w of shape (64,)"),
    (C14, "gguf_name", lambda n: C14.gguf_name(n).replace("attn_output", "attn_out"), "attention.wo"),
    (C21, "chat_render", lambda m, g=False: C21.chat_render(m, g).replace("</s>\n", "</s>"), "conversation 0"),
    (C21, "chat_targets", lambda m, t, n: (C21.chat_targets(m, t, n)[0], C21.chat_targets(m, t, n)[0][1:] + [-100]),
     "conversation 0 (2 messages), max_len=200"),
    (C21, "lora_merge", lambda W, A, B, a, r, rs=False: W + a / r * (B @ A), "rslora=True"),
]
IDS = [name for _, name, _, _ in WRONG]


def test_every_solution_has_a_wrong_answer():
    "The table covers every solution function that names a check, and every check it names exists."
    solved = {n for m in (C00, C01, C01B, C02, C02B, C02C, C03, C04, C05, C06, C07, C08, C09, C09B, C10, C11A, C11B,
                          C11C, C11D, C11E, C11F, C12, C12B, C13, C14, C15H, C21, C90, C92)
              for n in vars(m) if not n.startswith("_") and hasattr(check, n) and callable(vars(m)[n])}
    assert solved <= set(IDS), sorted(solved - set(IDS))
    assert all(hasattr(check, n) for n in IDS)


@pytest.mark.parametrize("module,name,wrong,where", WRONG, ids=IDS)
def test_check_passes_the_solution(module, name, wrong, where, capsys):
    getattr(check, name)(getattr(module, name))
    assert capsys.readouterr().out.startswith(f"check.{name}: passed (")


@pytest.mark.parametrize("module,name,wrong,where", WRONG, ids=IDS)
def test_check_fails_a_wrong_answer(module, name, wrong, where):
    with pytest.raises(AssertionError) as e:
        getattr(check, name)(wrong)
    message = str(e.value)
    assert message.startswith(f"check.{name}: on "), message
    assert where in message, message


def test_a_stub_is_not_attempted_yet(capsys):
    def rmsnorm(x, weight, eps):
        raise NotImplementedError
    check.rmsnorm(rmsnorm)  # no exception: the exercise is open, not failed
    assert "check.rmsnorm: not attempted yet (rmsnorm raises NotImplementedError)" in capsys.readouterr().out


def test_an_error_inside_the_answer_names_the_input():
    with pytest.raises(AssertionError, match=re.escape("check.causal_mask: on q_len=5, kv_len=5, your function raised "
                                                       "ZeroDivisionError")):
        check.causal_mask(lambda q, k: 1 / 0)


def test_a_check_leaves_the_random_state_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    check.block_forward(C07.block_forward)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_stub_of_a_file_writer_is_not_attempted_yet(capsys):
    "check.write_atomic catches what the learner's writer raises; a stub still reads as an open exercise."
    def write_atomic(path, data):
        raise NotImplementedError
    check.write_atomic(write_atomic)
    assert "check.write_atomic: not attempted yet" in capsys.readouterr().out


def test_assert_close_names_a_nan_where_the_reference_has_a_number():
    from minillm.check_runner import assert_close

    with pytest.raises(AssertionError, match=r"at index \(1,\) \(yours nan, reference 2\)"):
        assert_close("check.x", torch.tensor([1.0, float("nan"), 3.0]), torch.tensor([1.0, 2.0, 3.0]), "an input")
    assert_close("check.x", torch.tensor([float("nan"), 1.0]), torch.tensor([float("nan"), 1.0]), "both nan")  # equal
