"""Distillation: the loss against a float64 computation from the formula, the frozen teacher, the one-line refusals of
a teacher that does not fit, and the chapter's exercise checks against the worked solutions and wrong answers."""
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minillm import check
from minillm.config import LlamaConfig
from minillm.distill import Distiller, distill_loss, load_teacher
from minillm.hf import save_hf
from minillm.model import Llama
from minillm.tokenizer import Tokenizer, python_stdlib_texts

SOLUTIONS = Path(__file__).resolve().parent.parent / "solutions" / "18_distill.py"


def _log_softmax(z):
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def hand_loss(student, teacher, targets, alpha, T):
    "(1 − α)·CE + α·T²·KL(teacher ‖ student) in float64, one position at a time, straight from the definitions."
    V = student.shape[-1]
    s, t = student.detach().double().reshape(-1, V).numpy(), teacher.detach().double().reshape(-1, V).numpy()
    ce, kl = [], []
    for row_s, row_t, y in zip(s, t, targets.reshape(-1).tolist()):
        if y == -100:
            continue
        ce.append(-_log_softmax(row_s)[y])
        log_t, log_s = _log_softmax(row_t / T), _log_softmax(row_s / T)
        kl.append(np.sum(np.exp(log_t) * (log_t - log_s)))
    return (1 - alpha) * np.mean(ce) + alpha * T * T * np.mean(kl)


def logits_and_targets(seed=0, shape=(3, 7, 40), masked=(0, 5, 9, 20)):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(*shape, generator=g) * 2, torch.randn(*shape, generator=g) * 2
    y = torch.randint(0, shape[-1], shape[:-1], generator=g)
    y.view(-1)[list(masked)] = -100
    return s, t, y


@pytest.mark.parametrize("alpha,T", [(0.0, 1.0), (0.0, 3.0), (1.0, 1.0), (0.5, 2.0), (0.9, 4.0), (0.3, 0.5)])
def test_loss_matches_the_formula(alpha, T):
    s, t, y = logits_and_targets()
    assert distill_loss(s, t, y, alpha, T).item() == pytest.approx(hand_loss(s, t, y, alpha, T), rel=1e-5)


def test_alpha_0_is_cross_entropy_and_alpha_1_at_T_1_is_the_kl():
    s, t, y = logits_and_targets(1)
    torch.testing.assert_close(distill_loss(s, -5 * t, y, 0.0, 2.0), F.cross_entropy(s.reshape(-1, 40), y.reshape(-1)))
    keep = y.reshape(-1) != -100
    s2, t2 = s.reshape(-1, 40)[keep], t.reshape(-1, 40)[keep]
    kl = F.kl_div(F.log_softmax(s2, -1), F.log_softmax(t2, -1), log_target=True, reduction="batchmean")
    torch.testing.assert_close(distill_loss(s, t, y, 1.0, 1.0), kl)
    torch.testing.assert_close(distill_loss(t, t, y, 1.0, 3.0), torch.tensor(0.0), atol=1e-6, rtol=0)  # KL(p ‖ p) = 0


def test_ignored_positions_count_nowhere():
    "Logits at positions whose target is -100 change neither the loss nor get any gradient."
    s, t, y = logits_and_targets(2)
    ignored = (y == -100).unsqueeze(-1)
    s2, t2 = s.masked_fill(ignored, 50.0), t.masked_fill(ignored, -50.0)
    torch.testing.assert_close(distill_loss(s2, t2, y, 0.5, 2.0), distill_loss(s, t, y, 0.5, 2.0))
    s = s.requires_grad_()
    (grad,) = torch.autograd.grad(distill_loss(s, t, y, 0.5, 2.0), s)
    assert torch.isfinite(grad).all()
    assert (grad[ignored.expand_as(grad)] == 0).all() and (grad[~ignored.expand_as(grad)] != 0).any()


def test_gradient_is_finite_for_extreme_and_bf16_logits():
    s, t, y = logits_and_targets(3)
    for student, teacher in [(s * 500, -t * 500), (s.bfloat16(), t.bfloat16())]:
        student = student.detach().requires_grad_()
        loss = distill_loss(student, teacher, y, 0.7, 2.0)
        (grad,) = torch.autograd.grad(loss, student)
        assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(grad).all()


def test_logits_of_different_shapes_are_refused():
    s, t, y = logits_and_targets()
    with pytest.raises(ValueError, match="differ in shape") as e:
        distill_loss(s, t[..., :30], y)
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    teacher = Llama(LlamaConfig.from_name("debug"))
    student = Llama(LlamaConfig.from_name("debug", dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=88))
    return teacher, student


def test_distiller_leaves_the_teacher_frozen(models):
    teacher, student = models
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distiller = Distiller(teacher, alpha=0.5, temperature=2.0)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    x = torch.randint(0, 512, (2, 17), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(3):
        loss = distiller(student, x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    assert losses[-1] < losses[0]  # the student did learn
    with torch.no_grad():
        want = hand_loss(student(x[:, :-1]), teacher(x[:, :-1]), x[:, 1:], 0.5, 2.0)
        assert distiller(student, x[:, :-1], x[:, 1:]).item() == pytest.approx(want, rel=1e-5)
    assert "0.5·CE + 0.5·T²·KL" in distiller.describe() and "fused loss kernel is not used" in distiller.describe()


@pytest.mark.parametrize("alpha,T,what", [(1.5, 2.0, "alpha=1.5"), (-0.1, 2.0, "alpha=-0.1"),
                                          (float("nan"), 2.0, "alpha=nan"), (0.5, 0.0, "temperature=0.0"),
                                          (0.5, -1.0, "temperature=-1.0"), (0.5, float("inf"), "temperature=inf"),
                                          (True, 2.0, "alpha=True")])
def test_distiller_refuses_bad_settings(models, alpha, T, what):
    with pytest.raises(ValueError, match=what) as e:
        Distiller(models[0], alpha, T)
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def teacher_dirs(tmp_path_factory):
    "A teacher in a Hugging Face folder with its tokenizer, one without, and a tokenizer of the same size that is not it."
    root = tmp_path_factory.mktemp("teachers")
    texts = list(python_stdlib_texts(max_bytes=20_000))
    tok, other = Tokenizer.train(texts, vocab_size=300), Tokenizer.train(texts[1:], vocab_size=300)
    torch.manual_seed(0)
    model = Llama(LlamaConfig.from_name("debug", vocab_size=300))
    save_hf(model, root / "with-tokenizer", tokenizer=tok)
    save_hf(model, root / "without-tokenizer")
    return root, tok, other, model


def test_load_teacher_reads_a_teacher_that_fits(teacher_dirs):
    root, tok, _, model = teacher_dirs
    teacher, what = load_teacher(root / "with-tokenizer", tok.fingerprint, 300)
    assert not teacher.training and str(root / "with-tokenizer") in what
    x = torch.randint(0, 300, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), model(x))


@pytest.mark.parametrize("case,error,message", [
    ("other tokenizer", ValueError, "uses another tokenizer"),
    ("other vocab size", ValueError, "has vocab_size=300 but the student 512"),
    ("no tokenizer", ValueError, "holds no tokenizer"),
    ("no such folder", FileNotFoundError, "nowhere"),
])
def test_load_teacher_refuses_in_one_line(teacher_dirs, case, error, message):
    root, tok, other, _ = teacher_dirs
    path, fingerprint, vocab = {"other tokenizer": (root / "with-tokenizer", other.fingerprint, 300),
                                "other vocab size": (root / "with-tokenizer", tok.fingerprint, 512),
                                "no tokenizer": (root / "without-tokenizer", tok.fingerprint, 300),
                                "no such folder": (root / "nowhere", tok.fingerprint, 300)}[case]
    with pytest.raises(error, match=message) as e:
        load_teacher(path, fingerprint, vocab)
    assert "\n" not in str(e.value)


# The exercise checks of chapter 18: each passes the worked solution and fails a plausible wrong answer with a
# message that names the check and the input.
def _solutions():
    spec = importlib.util.spec_from_file_location("solutions_18_distill", SOLUTIONS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


C18 = _solutions()


def _softmax_no_max(x, T):  # exp of large logits overflows to inf, inf / inf = nan
    e = (x / T).exp()
    return e / e.sum(-1, keepdim=True)


def _kl_reversed(s, t, T):  # KL(student ‖ teacher)
    return C18.distill_kl(t, s, T)


def _kl_mean(s, t, T):  # reduction="mean": also divides by the vocabulary size
    V = s.shape[-1]
    with warnings.catch_warnings():  # PyTorch warns about this very mistake
        warnings.simplefilter("ignore")
        return F.kl_div(F.log_softmax(s.reshape(-1, V) / T, -1), F.log_softmax(t.reshape(-1, V) / T, -1),
                        log_target=True, reduction="mean")


def _loss_without_T2(s, t, y, alpha, T):
    V = s.shape[-1]
    keep = y.reshape(-1) != -100
    s2, t2 = s.reshape(-1, V)[keep], t.reshape(-1, V)[keep]
    return (1 - alpha) * F.cross_entropy(s2, y.reshape(-1)[keep]) + alpha * C18.distill_kl(s2, t2, T)


def _loss_kl_everywhere(s, t, y, alpha, T):  # the KL term also over positions whose target is -100
    V = s.shape[-1]
    ce = F.cross_entropy(s.reshape(-1, V), y.reshape(-1), ignore_index=-100)
    return (1 - alpha) * ce + alpha * T**2 * C18.distill_kl(s, t, T)


WRONG = [
    ("temperature_softmax", lambda x, T: torch.softmax(x * T, -1), "T=2.0"),
    ("temperature_softmax", _softmax_no_max, "exp(1000) overflows"),
    ("distill_kl", _kl_reversed, "logits of shape (8, 20) float32 (scale 1.0), T=1.0"),
    ("distill_kl", _kl_mean, "logits of shape (8, 20)"),
    ("distill_loss", _loss_without_T2, "alpha=0.5, T=2.0"),
    ("distill_loss", _loss_kl_everywhere, "targets -100 at flat positions [0, 3, 7]"),
]


@pytest.mark.parametrize("name", ["temperature_softmax", "distill_kl", "distill_loss"])
def test_check_passes_the_solution(name, capsys):
    getattr(check, name)(getattr(C18, name))
    assert capsys.readouterr().out.startswith(f"check.{name}: passed (")


@pytest.mark.parametrize("name,wrong,where", WRONG, ids=[f"{n}-{w.__name__}" for n, w, _ in WRONG])
def test_check_fails_a_wrong_answer(name, wrong, where):
    with pytest.raises(AssertionError) as e:
        getattr(check, name)(wrong)
    message = str(e.value)
    assert message.startswith(f"check.{name}: on "), message
    assert where in message, message
