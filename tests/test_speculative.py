"""Speculative decoding gives the target's own output: greedy token for token (many prompts and lengths, past the
context limit), sampled in distribution (a chi-square test against the target's exact distribution, enumerated on a
4-token vocabulary), equal to transformers' assisted generation, and `minillm generate --draft` prints what
`minillm generate` prints."""
import contextlib
import copy
import io
import itertools
import math
import os
from pathlib import Path

import pytest
import torch

from exercises import fails, load_solutions, passes
from minillm.cli import main
from minillm.config import LlamaConfig
from minillm.generate import generate
from minillm.hf import save_hf
from minillm.model import Llama
from minillm.speculative import (
    SpeculativeStats,
    accept_or_resample,
    check_same_tokenizer,
    expected_tokens_per_call,
    residual_distribution,
    speculative_generate,
)
from minillm.tokenizer import Tokenizer, python_stdlib_texts

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def noisy_copy(model, scale, seed=1):
    "The model with Gaussian noise on every weight: a draft that agrees with it often but not always."
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in out.parameters():
            w.add_(torch.randn(w.shape, generator=gen) * scale)
    return out.eval()


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    target = Llama(LlamaConfig.from_name("debug", init_std=0.1)).eval()
    small = Llama(LlamaConfig.from_name("debug", n_layers=1, dim=32, n_heads=2, n_kv_heads=1, ffn_dim=64,
                                        max_seq_len=40, init_std=0.1)).eval()
    return {"target": target, "near": noisy_copy(target, 0.004), "small": small}


def test_greedy_is_the_targets_greedy_output(models):
    "Prompts from 1 token to the whole 64-token context, continued to and past it (the window slides), γ from 1 to 8."
    target = models["target"]
    gen = torch.Generator().manual_seed(0)
    cases = [(1, 1), (1, 90), (64, 1), (64, 12), (40, 30), (7, 70)]
    accepted = 0
    for i, (n_prompt, n_new) in enumerate(cases):
        prompt = torch.randint(0, 512, (n_prompt,), generator=gen).tolist()
        want = generate(target, prompt, n_new, temperature=0)
        for draft, gamma in (("near", [1, 3, 4, 5, 8, 2][i]), ("small", [2, 4, 1, 3, 2, 5][i])):
            stats = SpeculativeStats()
            got = speculative_generate(target, models[draft], prompt, n_new, gamma, temperature=0, stats=stats)
            assert got == want, f"prompt of {n_prompt}, {n_new} new tokens, {draft} draft, gamma {gamma}"
            assert stats.new_tokens == n_new and stats.accepted <= stats.judged <= stats.drafted
            accepted += stats.accepted
    assert accepted > 50  # the near draft is accepted often, so blocks of several tokens were really taken


def test_replay_sampling_is_generates_sample(models):
    target, near = models["target"], models["near"]
    for seed, settings in enumerate((dict(temperature=1.0), dict(temperature=0.7, top_k=20), dict(temperature=0.9, top_p=0.8))):
        want = generate(target, [1, 2, 3], 80, generator=torch.Generator().manual_seed(seed), **settings)
        got = speculative_generate(target, near, [1, 2, 3], 80, 4, method="replay",
                                   generator=torch.Generator().manual_seed(seed), **settings)
        assert got == want, settings


def test_eos_stops_like_generate(models):
    target, near = models["target"], models["near"]
    greedy = generate(target, [7, 8], 30, temperature=0)
    eos = greedy[12]
    want = generate(target, [7, 8], 30, temperature=0, eos_id=eos)
    assert speculative_generate(target, near, [7, 8], 30, 5, temperature=0, eos_id=eos) == want
    assert want[-1] == eos and len(want) <= 13


def test_self_draft_is_always_accepted_and_the_formula(models):
    target = models["target"]
    stats = SpeculativeStats()
    speculative_generate(target, target, [1], 60, 4, temperature=0, stats=stats)
    assert stats.acceptance_rate == 1.0 and stats.tokens_per_call == 5.0  # 60 tokens in 12 blocks of 5
    assert expected_tokens_per_call(0.5, 2) == 1 + 0.5 + 0.25 and expected_tokens_per_call(1.0, 4) == 5.0
    assert expected_tokens_per_call(0.0, 7) == 1.0


def test_residual_enumerated_gives_the_target_distribution():
    "Enumerating the proposal x on a tiny vocabulary: kept with min(1, p/q), else drawn from the residual, gives p."
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        p = torch.rand(5, generator=gen, dtype=torch.float64) ** 3
        q = torch.rand(5, generator=gen, dtype=torch.float64) ** 3
        p[trial % 5] = 0  # zeros on either side
        q[(trial + 2) % 5] = 0
        p, q = p / p.sum(), q / q.sum()
        keep = torch.where(q > 0, (p / q).clamp(max=1), torch.zeros_like(q))
        law = q * keep + (1 - (q * keep).sum()) * residual_distribution(p, q)
        assert torch.allclose(law, p, atol=1e-12)
    p = torch.tensor([0.5, 0.5, 0.0])
    assert torch.equal(residual_distribution(p, p.clone()), p)


def chi_square_critical(df: int, z: float = 3.0902) -> float:
    "Upper 0.1% point of the chi-square distribution (Wilson-Hilferty: accurate to about 1% at these df)."
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi_square(counts: dict, law: dict, n: int) -> tuple[float, int]:
    "Pearson's statistic and its degrees of freedom; cells expected fewer than 5 times are pooled."
    small = [k for k in law if law[k] * n < 5]
    cells = [([k], law[k]) for k in law if law[k] * n >= 5] + ([(small, sum(law[k] for k in small))] if small else [])
    stat = sum((sum(counts.get(k, 0) for k in ks) - p * n) ** 2 / (p * n) for ks, p in cells)
    return stat, len(cells) - 1


def test_rejection_sampling_follows_the_target_distribution():
    """Three tokens from a 4-token vocabulary: their joint law under the paper's rule must be the target's, computed
    exactly by enumerating the 64 continuations. Pearson's test at the 0.1% level (seeded, so deterministic); the same
    test must reject samples of the draft itself, so it has the power to see a wrong rule."""
    torch.manual_seed(3)
    cfg = dict(vocab_size=4, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=32, max_seq_len=16, init_std=0.2)
    target = Llama(LlamaConfig(**cfg)).double().eval()
    draft = Llama(LlamaConfig(**cfg)).double().eval()
    prompt, n = [0, 1], 800
    law = {}
    with torch.no_grad():
        for seq in itertools.product(range(4), repeat=3):
            logp = target(torch.tensor([prompt + list(seq)]))[0, len(prompt) - 1:-1].log_softmax(-1)
            law[seq] = math.exp(sum(float(logp[i, t]) for i, t in enumerate(seq)))
    gen = torch.Generator().manual_seed(0)
    counts, drafted = {}, {}
    stats = SpeculativeStats()
    for _ in range(n):
        seq = tuple(speculative_generate(target, draft, prompt, 3, 2, method="rejection", generator=gen, stats=stats)[2:])
        counts[seq] = counts.get(seq, 0) + 1
        seq = tuple(generate(draft, prompt, 3, generator=gen)[2:])
        drafted[seq] = drafted.get(seq, 0) + 1
    stat, df = chi_square(counts, law, n)
    assert stat < chi_square_critical(df), f"chi-square {stat:.1f} on {df} degrees of freedom"
    assert 0.2 < stats.acceptance_rate < 0.95  # both accepting and rejecting happened
    stat_draft, df = chi_square(drafted, law, n)
    assert stat_draft > chi_square_critical(df)


def test_accept_or_resample_decides_sure_cases():
    p = torch.tensor([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
    q = torch.tensor([[1.0, 0.0, 0.0]])
    for seed in range(10):
        assert accept_or_resample(p, q, torch.tensor([0]), torch.Generator().manual_seed(seed)) == (0, 1)
    n, _ = accept_or_resample(p[[1, 1]], p[[1]], torch.tensor([2]), torch.Generator().manual_seed(0))
    assert n == 1


@pytest.fixture(scope="module")
def hf_pair(models, tmp_path_factory):
    from transformers import LlamaForCausalLM

    d = tmp_path_factory.mktemp("hf")
    save_hf(models["target"], d / "target")
    save_hf(models["near"], d / "draft")
    return LlamaForCausalLM.from_pretrained(d / "target"), LlamaForCausalLM.from_pretrained(d / "draft")


@pytest.mark.parametrize("n_prompt,n_new", [(3, 40), (20, 44)])
def test_transformers_assisted_generation_gives_the_same_tokens(models, hf_pair, n_prompt, n_new):
    hf_target, hf_draft = hf_pair
    prompt = torch.randint(0, 512, (n_prompt,), generator=torch.Generator().manual_seed(n_prompt)).tolist()
    theirs = hf_target.generate(torch.tensor([prompt]), assistant_model=hf_draft, do_sample=False,
                                max_new_tokens=n_new, min_new_tokens=n_new, pad_token_id=0, eos_token_id=None)
    assert theirs[0].tolist() == speculative_generate(models["target"], models["near"], prompt, n_new, 4, temperature=0)


def test_bad_settings_are_one_line_errors(models, bpe, sp):
    target, small = models["target"], models["small"]
    for kwargs, message in ((dict(gamma=0), "gamma=0"), (dict(gamma=21), "half the draft's context"),
                            (dict(method="typical"), "method='typical'"), (dict(max_new_tokens=-1), "max_new_tokens")):
        args = dict(gamma=4, max_new_tokens=5) | kwargs
        with pytest.raises(ValueError, match=message):
            speculative_generate(target, small, [1], args.pop("max_new_tokens"), **args)
    tiny_vocab = Llama(LlamaConfig.from_name("debug", vocab_size=300)).eval()
    with pytest.raises(ValueError, match="draft's vocabulary"):
        speculative_generate(target, tiny_vocab, [1], 5)
    with pytest.raises(ValueError, match="is not the target's"):
        check_same_tokenizer(bpe, sp)


@pytest.fixture(scope="module")
def checkpoints(models, corpus, tmp_path_factory):
    "Target and draft as Hugging Face folders with a tokenizer (what --ckpt and --draft accept), and a foreign draft."
    d = tmp_path_factory.mktemp("ckpts")
    tok = Tokenizer.train(corpus[:40], vocab_size=400)
    other = Tokenizer.train(list(python_stdlib_texts(max_bytes=30_000)), vocab_size=400)
    save_hf(models["target"], d / "target", tokenizer=tok)
    save_hf(models["near"], d / "draft", tokenizer=tok)
    save_hf(models["near"], d / "foreign", tokenizer=other)
    return d


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("settings", [[], ["--temperature", "0"], ["--temperature", "1.0", "--top-k", "30", "--seed", "5"]])
def test_generate_with_a_draft_prints_the_same_text(checkpoints, settings):
    base = ["generate", "--ckpt", str(checkpoints / "target"), "--prompt", "def ", "--max-new-tokens", "60", *settings]
    code, plain, _ = run_cli(*base)
    assert code == 0
    code, fast, err = run_cli(*base, "--draft", str(checkpoints / "draft"), "--draft-tokens", "3")
    assert code == 0 and fast == plain
    assert "acceptance rate" in err and "tokens per target call" in err and "tokens/s" in err


def test_generate_refuses_a_draft_with_another_tokenizer(checkpoints):
    code, out, err = run_cli("generate", "--ckpt", str(checkpoints / "target"), "--prompt", "x", "--draft",
                             str(checkpoints / "foreign"))
    assert code == 2 and out == ""
    assert err.startswith("minillm generate: error: the draft's tokenizer") and err.count("\n") == 1


def test_a_draft_for_a_trained_target_is_one_command(tmp_path, monkeypatch, capsys):
    """`minillm train --preset debug --tokenizer TARGET_RUN`: a target trained with a 600-id tokenizer (not the debug
    preset's 512) gives the draft its tokenizer and so its vocabulary; the draft resumes, and generate takes the pair."""
    from minillm.checkpoint import Checkpoint

    monkeypatch.chdir(tmp_path)
    texts = list(python_stdlib_texts(max_bytes=40_000))
    Path("text.txt").write_text("\n\n".join(texts))
    tok = Tokenizer.train(texts, vocab_size=600)
    tok.save("tok.bpe.json")
    steps = ["--time-limit", "0", "--eval-every", "0", "--sample-tokens", "0", "--seq-len", "32", "--batch", "4",
             "--no-progress", "--device", "cpu"]
    common = ["train", "--preset", "debug", "--data", "text.txt", "--max-steps", "2", *steps]
    assert main([*common, "--tokenizer", "tok.bpe.json", "--out", "target"]) == 0
    capsys.readouterr()
    assert main([*common, "--tokenizer", "target", "--out", "draft"]) == 0
    err = capsys.readouterr().err
    assert "vocabulary: 600 ids, the tokenizer's (the debug preset trains one of 512)" in err
    assert f"({LlamaConfig.from_name('debug', vocab_size=600).n_params:,} parameters)" in err.splitlines()[0]
    target, draft = Checkpoint("target"), Checkpoint("draft")
    assert target.config.vocab_size == draft.config.vocab_size == 600
    assert draft.tokenizer().fingerprint == target.tokenizer().fingerprint == tok.fingerprint
    # the checkpoint records the vocabulary: resuming builds the same model (without --tokenizer)
    assert main(["train", "--preset", "debug", "--data", "text.txt", "--max-steps", "3", *steps, "--out", "draft",
                 "--resume"]) == 0
    assert "resuming from" in capsys.readouterr().err and Checkpoint("draft").step == 3
    base = ["generate", "--ckpt", "target", "--prompt", "def ", "--max-new-tokens", "12", "--temperature", "0"]
    assert main(base) == 0
    plain = capsys.readouterr().out
    assert main([*base, "--draft", "draft"]) == 0
    out = capsys.readouterr()
    assert out.out == plain and "acceptance rate" in out.err


C16 = load_solutions("16_speculative")


def _always_accept(p, q, drafts, generator=None):  # the draft's law, not the target's
    return len(drafts), int(torch.multinomial(p[len(drafts)], 1, generator=generator))


EXERCISES_16 = [  # (check, a plausible wrong answer, what its message must name)
    ("expected_tokens_per_call", lambda a, g: (1 - a ** (g + 1)) / (1 - a) if a < 1 else float("nan"),
     "alpha=1.0, gamma=1"),  # the formula divides by zero at α = 1
    ("expected_tokens_per_call", lambda a, g: (1 - a ** g) / (1 - a) if a < 1 else g, "alpha=0.3, gamma=1"),  # no bonus
    ("residual_distribution", lambda p, q: (p - q).abs() / (p - q).abs().sum(-1, keepdim=True),
     "one pair of 8-word distributions"),
    ("accept_or_resample", _always_accept, "should follow p"),
]


@pytest.mark.parametrize("name", ["expected_tokens_per_call", "residual_distribution", "accept_or_resample"])
def test_check_passes_the_solution(name, capsys):
    passes(name, getattr(C16, name), capsys, **({"trials": 5000} if name == "accept_or_resample" else {}))


@pytest.mark.parametrize("name,wrong,where", EXERCISES_16, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(EXERCISES_16)])
def test_check_fails_a_wrong_answer(name, wrong, where):
    fails(name, wrong, where, **({"trials": 5000} if name == "accept_or_resample" else {}))
