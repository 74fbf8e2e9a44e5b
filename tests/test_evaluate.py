"""Evaluation checked by code no one here wrote: transformers' LlamaForCausalLM (its own loss) for bits per byte on the
Hugging Face export of the same checkpoint, lm-evaluation-harness's `hf` model for multiple choice, rolling
log-likelihoods and generation; plus the command line, bad input, the data/ files and the exercise checks."""
import json
import math
import os
import subprocess
import sys
from collections import Counter

os.environ["HF_DATASETS_OFFLINE"] = "1"  # nothing downloads: every task below reads local files
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
import transformers
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import LlamaForCausalLM

from exercises import fails, load_solutions, passes
from minillm import check
from minillm.cli import main
from minillm.evaluate import (
    choice_accuracy,
    choice_scores,
    data_dir,
    data_path,
    files_bpb,
    heldout_path,
    heldout_texts,
    load_choices,
    sliding_windows,
    text_bpb,
    wilson_interval,
)
from minillm.export import load_for_export
from minillm.harness import MinillmLM, run_tasks

transformers.utils.logging.set_verbosity_error()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A few items of the course's set, plus hand-written ones for the seams: trailing spaces in the context (lm-eval moves
# them to the ending), a context longer than the model's 64 tokens (truncated on the left), non-ASCII endings.
EXTRA_ITEMS = [
    dict(ctx="The quick brown fox jumps over the   ", endings=["lazy dog.", "moon", "quick brown fox"], label=0),
    dict(ctx="def area(radius):\n    return 3.14159 * " * 6, endings=["radius * radius", "'circle'"], label=0),
    dict(ctx="Größenwahn, naïve café,", endings=[" déjà vu", " ça va?", " 日本語"], label=1),
]

TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: ctx
doc_to_choice: endings
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A run folder from `minillm train` (debug preset, 3 steps), its Hugging Face export, and a local multiple-choice
    task (YAML and data written here)."""
    from minillm.corpora import builtin_corpus

    d = tmp_path_factory.mktemp("eval")
    (d / "text.txt").write_text("\n\n".join(doc.text for doc in builtin_corpus(max_bytes=120_000)), encoding="utf-8")
    assert main(["train", "--preset", "debug", "--data", str(d / "text.txt"), "--out", str(d / "run"), "--max-steps",
                 "3", "--time-limit", "0", "--no-progress", "--batch", "4", "--seq-len", "32"]) == 0
    assert main(["export", "--ckpt", str(d / "run"), "--out", str(d / "hf")]) == 0
    items = [json.loads(line) for line in data_path("stdlib_mc.jsonl").read_text().splitlines()[:21]] + EXTRA_ITEMS
    tasks = d / "tasks"
    tasks.mkdir()
    (tasks / "local_mc.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items), encoding="utf-8")
    (tasks / "local_mc.yaml").write_text(TASK_YAML.format(name="local_mc", data=json.dumps(str(tasks / "local_mc.jsonl"))))
    model, tok, _ = load_for_export(d / "run")
    return dict(dir=d, run=d / "run", hf=d / "hf", tasks=tasks, items=items, model=model, tok=tok)


# ---------------------------------------------------------------------------------------------- bits per byte
def test_sliding_windows_score_every_token_once_with_half_a_window_of_context():
    for seq_len in range(2, 20):
        for n_ids in range(0, 90):
            scored = []
            windows = sliding_windows(n_ids, seq_len)
            for k, (start, end, n) in enumerate(windows):
                assert 0 < end - start <= seq_len and 0 < n <= end - start and start == k * (seq_len // 2)
                positions = range(end - n + 1, end + 1)  # the positions of the ids this window predicts and counts
                if k:
                    assert min(positions) - start >= seq_len - seq_len // 2 >= seq_len / 2
                scored += positions
            assert scored == list(range(1, n_ids))


def reference_bpb(hf_model, tok, texts, seq_len):
    """The protocol written out with transformers doing the arithmetic: [BOS] + ids, windows every seq_len // 2, each
    token counted in the first window that reaches it, transformers' own loss over the counted labels."""
    nats, n_tokens = 0.0, 0
    for text in texts:
        ids = [tok.bos_id] + tok.encode(text)
        done, start = 0, 0  # done: the last position counted so far
        while done < len(ids) - 1:
            end = min(start + seq_len, len(ids) - 1)  # inputs ids[start:end], labels ids[start + 1:end + 1]
            x = torch.tensor([ids[start:end + 1]])
            labels = x.clone()
            labels[0, : done - start + 1] = -100  # positions up to `done` were counted before (or are BOS)
            counted = int((labels[0, 1:] != -100).sum())
            with torch.no_grad():
                nats += hf_model(input_ids=x, labels=labels).loss.double().item() * counted
            n_tokens += counted
            done, start = end, start + seq_len // 2
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return nats / math.log(2) / n_bytes, n_tokens, n_bytes


@pytest.mark.parametrize("seq_len", [None, 17, 2])
def test_text_bpb_matches_transformers(ckpt, seq_len):
    hf_model = LlamaForCausalLM.from_pretrained(ckpt["hf"]).eval()
    parts = heldout_texts()
    head = {None: 5000, 17: 2500, 2: 400}[seq_len]  # a few hundred windows at most: transformers runs each alone
    texts = [parts["prose"][-head:], parts["code"][:head], "x", "", "naïve café — ünïcode ✓ 日本語 🙂"]
    want, tokens, n_bytes = reference_bpb(hf_model, ckpt["tok"], texts, seq_len or 64)
    got = text_bpb(ckpt["model"], ckpt["tok"], texts, seq_len=seq_len, batch_size=5)
    assert set(got) == {"bpb", "nats_per_token", "tokens", "bytes"}
    assert got["tokens"] == tokens == sum(len(ckpt["tok"].encode(t)) for t in texts)
    assert got["bytes"] == n_bytes
    assert got["bpb"] == pytest.approx(want, rel=1e-4)
    assert got["nats_per_token"] == pytest.approx(want * math.log(2) * n_bytes / tokens, rel=1e-4)


def test_a_uniform_model_pays_log2_vocab_bits_per_token(ckpt):
    """Hand computation: with a zero output layer every token has probability 1/V, so bpb = tokens · log2 V / bytes."""
    model = load_for_export(ckpt["run"])[0]
    with torch.no_grad():
        model.output.weight.zero_()
    text = heldout_path().read_text(encoding="utf-8")[:3000]
    got = text_bpb(model, ckpt["tok"], [text])
    V = model.cfg.vocab_size
    assert got["nats_per_token"] == pytest.approx(math.log(V), rel=1e-6)
    assert got["bpb"] == pytest.approx(len(ckpt["tok"].encode(text)) * math.log2(V) / len(text.encode()), rel=1e-6)


def test_text_bpb_restores_the_mode_and_takes_no_gradient(ckpt):
    model = ckpt["model"]
    model.train()
    text_bpb(model, ckpt["tok"], ["def f(x):\n    return x\n"])
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    text_bpb(model, ckpt["tok"], ["def f(x):\n    return x\n"])
    assert not model.training


def test_text_bpb_bad_input(ckpt):
    m, t = ckpt["model"], ckpt["tok"]
    for kwargs, words in [(dict(texts="a text"), "list of strings"), (dict(texts=["a", 3]), "list of strings"),
                          (dict(texts=["a"], seq_len=1), "from 2 to"), (dict(texts=["a"], seq_len=65), "max_seq_len=64"),
                          (dict(texts=["a"], batch_size=0), "batch_size"), (dict(texts=["", ""]), "empty")]:
        with pytest.raises(ValueError, match=words):
            text_bpb(m, t, **kwargs)


# ---------------------------------------------------------------------------------------------- multiple choice
def hf_run(ckpt, tasks, **kwargs):
    return simple_evaluate(model="hf", model_args=f"pretrained={ckpt['hf']},dtype=float32", tasks=tasks, device="cpu",
                           batch_size=8, task_manager=TaskManager(include_path=str(ckpt["tasks"]), include_defaults=False),
                           **kwargs)


def by_doc(samples):
    return [[ll for ll, _ in s["filtered_resps"]] for s in sorted(samples, key=lambda s: s["doc_id"])]


def test_multiple_choice_equals_lm_evals_hf_model_on_the_export(ckpt):
    """minillm through `run_tasks` (a run folder) against lm-eval's own `hf` model on the Hugging Face export: the same
    log-likelihood for every choice, so the same acc and acc_norm; and our by-hand scores are lm-eval's."""
    ours = run_tasks(ckpt["run"], ["local_mc"], include_path=ckpt["tasks"], device="cpu", log_samples=True)
    theirs = hf_run(ckpt, ["local_mc"], log_samples=True)
    a, b = ours["results"]["local_mc"], theirs["results"]["local_mc"]
    assert ours["n-samples"]["local_mc"]["effective"] == len(ckpt["items"])
    assert (a["acc,none"], a["acc_norm,none"]) == (b["acc,none"], b["acc_norm,none"])
    mine, hf = by_doc(ours["samples"]["local_mc"]), by_doc(theirs["samples"]["local_mc"])
    assert torch.allclose(torch.tensor([x for r in mine for x in r]), torch.tensor([x for r in hf for x in r]),
                          rtol=1e-4, atol=1e-4)
    items = load_choices(ckpt["tasks"] / "local_mc.jsonl")
    by_hand = choice_scores(ckpt["model"], ckpt["tok"], items, batch_size=7)
    assert torch.allclose(torch.tensor([x for r in by_hand for x in r]), torch.tensor([x for r in hf for x in r]),
                          rtol=1e-4, atol=1e-4)
    acc = choice_accuracy(by_hand, items)
    assert (acc["acc"], acc["acc_norm"]) == (b["acc,none"], b["acc_norm,none"])


def test_rolling_loglikelihood_and_generation_equal_lm_evals_hf_model(ckpt):
    ours = MinillmLM(ckpt=str(ckpt["run"]), device="cpu", batch_size=4)
    theirs = HFLM(pretrained=str(ckpt["hf"]), device="cpu", dtype="float32", batch_size=4)
    long = heldout_path().read_text(encoding="utf-8")[:1500]  # several windows of 64 tokens
    rolling = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate([long, "x = 1\n"])]
    assert ours.loglikelihood_rolling(rolling) == pytest.approx(theirs.loglikelihood_rolling(rolling, disable_tqdm=True),
                                                                rel=1e-4)
    until = {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False}
    prompts = ["def add(a, b):\n    ", "The quick brown", "import "]
    gen = [Instance("generate_until", {}, (p, dict(until)), i) for i, p in enumerate(prompts)]
    assert ours.generate_until(gen) == theirs.generate_until(gen, disable_tqdm=True)


def test_choice_accuracy_by_hand():
    items = [dict(ctx="", endings=["ab", "abcd"], label=1), dict(ctx="", endings=["x", "yy", "zzz"], label=0)]
    scores = [[-1.0, -1.5], [-3.0, -2.0, -4.0]]  # acc picks 0, 1; per character: -0.5 vs -0.375 → 1; -3, -1, -1.33 → 1
    got = choice_accuracy(scores, items)
    assert (got["acc"], got["acc_norm"], got["n"]) == (0.0, 0.5, 2)
    assert got["chance"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    # the Wilson interval for 7 of 10 at 95% (a published worked value: 0.3968 to 0.8922)
    lo, hi = wilson_interval(7, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.3968, 0.8922)


def test_load_choices_bad_input(tmp_path):
    for line, words in [("not json", "not a JSON line"), ('{"ctx": "a", "endings": ["b"], "label": 0}', "two or more"),
                        ('{"ctx": "a", "endings": ["b", "c"], "label": 2}', "index of the right ending"),
                        ('{"endings": ["b", "c"], "label": 0}', "'ctx'")]:
        (tmp_path / "x.jsonl").write_text(line + "\n")
        with pytest.raises(ValueError, match=words):
            load_choices(tmp_path / "x.jsonl")
    (tmp_path / "y.jsonl").write_text('{"ctx": "a", "endings": ["b", "c"], "label": "1"}\n')
    assert load_choices(tmp_path / "y.jsonl")[0]["label"] == 1  # Hugging Face's HellaSwag stores labels as strings
    with pytest.raises(FileNotFoundError):
        load_choices(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------------------------------------- the command line
def test_cli_eval_data_from_a_run_folder_and_a_hugging_face_directory(ckpt, tmp_path, capsys):
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text(heldout_texts()["code"][:3000], encoding="utf-8")
    second.write_text("Größenwahn\n" * 50, encoding="utf-8")
    files = [str(first), str(second)]
    assert main(["eval", "--ckpt", str(ckpt["run"]), "--data", *files, "--json", str(tmp_path / "bpb.json")]) == 0
    out = capsys.readouterr().out
    assert f"{first}: " in out and "all: " in out
    got = json.loads((tmp_path / "bpb.json").read_text())
    want = text_bpb(ckpt["model"], ckpt["tok"], [first.read_text(encoding="utf-8"), second.read_text(encoding="utf-8")])
    assert {k: got[k] for k in want} == pytest.approx(want, rel=1e-9)
    assert got["files"][str(second)]["bytes"] == len(second.read_bytes())
    assert main(["eval", "--ckpt", str(ckpt["hf"]), "--data", str(first), "--seq-len", "32", "--json",
                 str(tmp_path / "hf.json")]) == 0
    from_hf = json.loads((tmp_path / "hf.json").read_text())
    same = files_bpb(ckpt["model"], ckpt["tok"], [first], seq_len=32)
    assert from_hf["bpb"] == pytest.approx(same["bpb"], rel=1e-5) and from_hf["tokens"] == same["tokens"]


def test_cli_eval_tasks_with_include_path_limit_and_the_course_task(ckpt, tmp_path, capsys):
    argv = ["eval", "--ckpt", str(ckpt["run"]), "--tasks", "local_mc,stdlib_mc", "--include-path", str(ckpt["tasks"]),
            "--limit", "8", "--device", "cpu", "--json", str(tmp_path / "r.json")]
    assert main(argv) == 0
    assert "stdlib_mc" in capsys.readouterr().out
    results = json.loads((tmp_path / "r.json").read_text())
    for task, items in (("local_mc", ckpt["items"][:8]), ("stdlib_mc", load_choices(data_path("stdlib_mc.jsonl"))[:8])):
        acc = choice_accuracy(choice_scores(ckpt["model"], ckpt["tok"], items), items)
        assert (results[task]["acc,none"], results[task]["acc_norm,none"]) == (acc["acc"], acc["acc_norm"])


def test_lm_eval_command_line_with_minillm_registered(ckpt, tmp_path):
    """`python -m minillm.harness run --model minillm ...` is lm-eval's own command line. lm-eval indexes its thousands of
    task files first (~20 s); here its TaskManager reads only the include path, and the rest runs as users run it."""
    code = ("import runpy, sys, lm_eval.tasks.manager as m\n"
            "init = m.TaskManager.__init__\n"
            "m.TaskManager.__init__ = lambda self, *a, include_defaults=True, **k: init(self, *a, include_defaults=False, **k)\n"
            "sys.argv = ['minillm.harness'] + sys.argv[1:]\n"
            "runpy.run_module('minillm.harness', run_name='__main__', alter_sys=True)\n")
    args = ["run", "--model", "minillm", "--model_args", f"ckpt={ckpt['run']}", "--device", "cpu", "--tasks", "local_mc",
            "--include_path", str(ckpt["tasks"]), "--limit", "6", "--output_path", str(tmp_path / "out")]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), TQDM_DISABLE="1")
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]["local_mc"]
    acc = choice_accuracy(choice_scores(ckpt["model"], ckpt["tok"], ckpt["items"][:6]), ckpt["items"][:6])
    assert (results["acc,none"], results["acc_norm,none"]) == (acc["acc"], acc["acc_norm"])
    assert "minillm ({'ckpt': " in res.stdout  # lm-eval's summary line names the model it ran


def test_cli_generate_takes_a_hugging_face_directory(ckpt, capsys):
    argv = ["--prompt", "def ", "--max-new-tokens", "12", "--temperature", "0", "--device", "cpu"]
    assert main(["generate", "--ckpt", str(ckpt["run"]), *argv]) == 0
    from_run = capsys.readouterr().out
    assert main(["generate", "--ckpt", str(ckpt["hf"]), *argv]) == 0
    assert capsys.readouterr().out == from_run and from_run.startswith("def ")


def test_cli_eval_bad_input(ckpt, tmp_path, capsys):
    run = str(ckpt["run"])
    cases = [(["--ckpt", run], "either --data"),
             (["--ckpt", run, "--data", str(heldout_path()), "--tasks", "x"], "either --data"),
             (["--ckpt", run, "--data", str(tmp_path / "missing.txt")], "no such file"),
             (["--ckpt", str(tmp_path / "nothing"), "--data", str(heldout_path())], "no such checkpoint"),
             (["--ckpt", run, "--tasks", "local_mc", "--limit", "0"], "--limit"),
             (["--ckpt", run, "--data", str(heldout_path()), "--json", str(tmp_path / "no" / "x.json")], "--json"),
             (["--ckpt", run, "--data", str(heldout_path()), "--seq-len", "1000"], "max_seq_len"),
             (["--ckpt", run, "--tasks", "local_mc", "--include-path", str(tmp_path / "none")], "include path")]
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00text")
    cases.append((["--ckpt", run, "--data", str(tmp_path / "binary.txt")], "not UTF-8"))
    for args, words in cases:
        assert main(["eval", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("minillm eval: error: ") and words in err and err.count("\n") == 1, (args, err)
    assert not list(tmp_path.glob("**/*.json"))


# ---------------------------------------------------------------------------------------------- data/
def test_data_folder_is_small_and_described():
    files = [p for p in data_dir().rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 2_000_000
    readme = (data_dir() / "README.md").read_text()
    for p in files:
        if p.parent == data_dir() and p.name != "README.md":
            assert f"`{p.name}`" in readme, p.name


def test_data_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILLM_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match="no heldout.txt"):
        heldout_path()
    monkeypatch.setenv("MINILLM_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="MINILLM_DATA"):
        data_dir()


def test_heldout_text_has_prose_then_code():
    parts = heldout_texts()
    assert 10_000 < len(parts["prose"]) and 10_000 < len(parts["code"])
    assert not parts["prose"].isascii() and "def " not in parts["prose"] and "\ndef " in parts["code"]
    compile(parts["code"], "heldout code", "exec")  # the code part is a valid Python program


def test_multiple_choice_set_has_hellaswags_shape():
    items = load_choices(data_path("stdlib_mc.jsonl"))
    assert 500 <= len(items)
    hellaswag_fields = {"ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split", "split_type",
                        "label"}
    for it in items:
        assert set(it) == hellaswag_fields and len(it["endings"]) == 4 == len(set(it["endings"]))
        assert it["ctx"] == it["ctx_a"] and it["ctx"].isascii() and all(e.isascii() for e in it["endings"])
        assert it["ctx"] == it["ctx"].rstrip()  # the seam is a word boundary: no trailing spaces to move
    kinds = Counter(it["split_type"] for it in items)
    assert set(kinds) == {"code", "docstring"} and min(kinds.values()) >= 100
    labels = Counter(it["label"] for it in items)
    assert all(0.2 < labels[k] / len(items) < 0.3 for k in range(4))


def test_chat_examples_have_the_messages_shape():
    rows = [json.loads(line) for line in data_path("chat.jsonl").read_text().splitlines()]
    assert 300 <= len(rows) <= 1000
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        if roles[0] == "system":
            roles = roles[1:]
        assert roles and roles == ["user", "assistant"] * (len(roles) // 2)
        assert all(isinstance(m["content"], str) and m["content"] for m in row["messages"])


def test_toy_reference_curve_has_the_metrics_columns():
    import csv

    rows = list(csv.DictReader(data_path("toy_metrics.csv").open()))
    assert {"step", "loss", "val_loss", "val_bpb", "tokens_per_s"} <= set(rows[0])
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] >= 500
    bpb = [float(r["val_bpb"]) for r in rows if r["val_bpb"]]
    assert bpb[-1] < bpb[0] - 1


# ---------------------------------------------------------------------------------------------- exercise checks
C15 = load_solutions("15_evaluate")


def _scores_no_space_move(m, t, c, e):  # encodes the context with its trailing spaces: the seam moves
    ctx = [t.bos_id] + t.encode(c)
    scores = []
    for ending in e:
        whole = [t.bos_id] + t.encode(c + ending)
        ids, n = whole[-(m.cfg.max_seq_len + 1):], len(whole) - len(ctx)
        with torch.no_grad():
            logp = m(torch.tensor([ids[:-1]]))[0].log_softmax(-1)
        scores.append(logp[-n:].gather(1, torch.tensor(ids[-n:])[:, None]).sum().item())
    return scores


EXERCISES_15 = [  # (check, a plausible wrong answer, what its message must name)
    ("sliding_windows", lambda n, T: [(a, min(a + T, n - 1), min(a + T, n - 1) - a) for a in range(0, max(n - 1, 0), T)],
     "n_ids=5, seq_len=2"),  # disjoint windows: the first ids of each have less context
    ("bits_per_byte", lambda m, t, s, n: C15.bits_per_byte(m, t, s, n) * len(s.encode()) / max(1, len(t.encode(s))),
     "text 'def add(a, b):'"),  # bits per token, not per byte (equal on a one-byte, one-token text)
    ("bits_per_byte", lambda m, t, s, n: C15.bits_per_byte(m, t, s, max(2, n // 2)), "seq_len 16"),  # less context
    ("choice_scores", _scores_no_space_move, "context 'The quick brown fox   '"),
    ("choice_scores", lambda m, t, c, e: None, "expected one number per ending, got None"),
]


@pytest.mark.parametrize("name", ["sliding_windows", "bits_per_byte", "choice_scores"])
def test_check_passes_the_solution(name, capsys):
    passes(name, getattr(C15, name), capsys)


@pytest.mark.parametrize("name,wrong,where", EXERCISES_15, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(EXERCISES_15)])
def test_check_fails_a_wrong_answer(name, wrong, where):
    fails(name, wrong, where)


def test_an_open_exercise_is_not_a_failure(capsys):
    def my_windows(n_ids, seq_len):
        raise NotImplementedError
    check.sliding_windows(my_windows)
    assert capsys.readouterr().out.startswith("check.sliding_windows: not attempted yet (my_windows raises")
