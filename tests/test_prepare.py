"""`minillm prepare`: pieces prepared by K processes, merged, hold exactly the documents and tokens of a single pass;
an interrupted preparation goes on from its finished pieces; training reads prepared folders, refuses a dataset it
cannot bound, and stops when its processes see different data.

Kept light at import time: spawned processes import this module to find `_agreement_worker`.
"""
import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder of text the way corpora come: text files in subfolders, a JSON-lines file, an empty file; and a
    small BPE tokenizer saved to a file."""
    from minillm.corpora import builtin_corpus
    from minillm.tokenizer import Tokenizer

    d = tmp_path_factory.mktemp("prepare")
    docs = [doc.text for doc in builtin_corpus(max_bytes=300_000)]
    corpus = d / "corpus"
    (corpus / "lib").mkdir(parents=True)
    for i, text in enumerate(docs[:24]):
        (corpus / ("lib" if i % 3 else "") / f"doc{i:03d}.txt").write_text(text)
    with open(corpus / "rows.jsonl", "w") as f:
        for text in docs[24:48]:
            f.write(json.dumps({"text": text}) + "\n")
    (corpus / "empty.txt").write_text("")
    tok = Tokenizer.train(docs[:12], vocab_size=300)
    tok.save(d / "tok.bpe.json")
    return d


def documents(folder, split):
    """The documents of a split of a token folder, as a multiset of token tuples: every document starts with BOS,
    which no text encodes to."""
    from minillm.data import TokenDataset

    ds = TokenDataset(folder, split)
    bos = ds.manifest["tokenizer"]["bos_id"]
    docs = collections.Counter()
    for shard in ds.shards:
        starts = np.flatnonzero(np.asarray(shard) == bos).tolist() + [len(shard)]
        assert starts[0] == 0
        docs.update(tuple(np.asarray(shard[a:b]).tolist()) for a, b in zip(starts, starts[1:]))
    return docs


def reference(source, tok, out):
    "One pass over the source in this process: `minillm.data.prepare` as `train` uses it."
    from minillm.corpora import Source
    from minillm.data import prepare

    prepare(Source.parse(str(source)), tok, out, num_workers=0, progress=False)
    return out


def same_tokens(a, b):
    for split in ("train", "val"):
        assert documents(a, split) == documents(b, split), split
    ma, mb = (json.loads((f / "manifest.json").read_text()) for f in (a, b))
    for split in ("train", "val"):
        for k in ("tokens", "documents", "bytes"):
            assert ma["splits"][split][k] == mb["splits"][split][k], (split, k)


# ------------------------------------------------------------------------------------------- cutting into pieces


def test_split_files_into_contiguous_groups_of_equal_bytes():
    from minillm.prepare import split_files

    # by hand: 10 bytes in 2 groups, the first file alone reaches half; six equal files in 3 groups of 2
    assert split_files([5, 1, 1, 1, 1, 1], 2) == [(0, 1), (1, 6)]
    assert split_files([1] * 6, 3) == [(0, 2), (2, 4), (4, 6)]
    assert split_files([100, 0, 0], 3) == [(0, 1), (1, 2), (2, 3)]  # every group keeps a file
    with pytest.raises(ValueError, match="3 files make 1 to 3 groups"):
        split_files([1, 2, 3], 4)


def test_plan_goes_by_files_where_there_are_files_else_by_rows(work):
    from minillm.corpora import Source
    from minillm.prepare import plan_pieces

    folder = Source.parse(str(work / "corpus"))
    pieces = plan_pieces(folder, num_shards=3)
    assert [p.by for p in pieces] == ["files"] * 3 and [p.count for p in pieces] == [3] * 3
    files = [f for p in pieces for f in p.files]
    assert sorted(files) == files and len(files) == 26  # every file once, in order
    assert [p.by for p in plan_pieces(Source.parse("builtin?max_bytes=1000"), 2)] == ["rows", "rows"]
    assert [p.by for p in plan_pieces(folder, num_shards=40)] == ["rows"] * 40  # more tasks than files


# ------------------------------------------------------------------------- K processes, merged = one pass


def test_parts_prepared_by_k_processes_and_merged_hold_exactly_the_single_pass(work, tmp_path, capsys):
    """Two `minillm prepare --num-shards 2 --shard-index I` processes at once (as Slurm array tasks run), then
    `--merge`: the same documents, token for token, in the same splits, as one pass in one process; and every
    document of the corpus, encoded on its own, is there once."""
    from minillm.cli import main
    from minillm.corpora import Source
    from minillm.tokenizer import Tokenizer

    out = tmp_path / "out"
    args = ["prepare", "--data", work / "corpus", "--tokenizer", work / "tok.bpe.json", "--out", out, "--num-workers", 0]
    tasks = [subprocess.Popen([sys.executable, "-m", "minillm", *map(str, args), "--num-shards", "2", "--shard-index",
                               str(i)], cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for t in tasks:
        stdout, stderr = t.communicate(timeout=300)
        assert t.returncode == 0, stderr
        assert "once every task has finished: minillm prepare --merge" in stdout
    assert main(["prepare", "--merge", str(out), "--no-progress"]) == 0
    assert f"train on them with: minillm train --data {out}" in capsys.readouterr().out
    info = json.loads((out / "prepared.json").read_text())
    merged = out / info["datasets"][0]["folder"]
    assert not (out / "parts").exists() and (out / info["tokenizer"]).is_file()
    tok = Tokenizer.load(work / "tok.bpe.json")
    same_tokens(merged, reference(work / "corpus", tok, tmp_path / "ref"))
    every = collections.Counter(tuple(tok.encode(d.text, bos=True, eos=True))
                                for d in Source.parse(str(work / "corpus")).documents() if d.text)
    assert documents(merged, "train") + documents(merged, "val") == every


def test_rows_and_hugging_face_data_files_and_worker_processes(work, tmp_path):
    """The built-in corpus goes by rows (two tasks, each every other document); a streamed Hugging Face dataset by
    its data files; one task with two worker processes takes whole pieces. Each equals its single pass."""
    from minillm.prepare import merge_prepared, prepare_sources
    from minillm.tokenizer import Tokenizer

    tok = Tokenizer.load(work / "tok.bpe.json")
    rows = tmp_path / "rows"
    for i in range(2):
        task = prepare_sources("builtin?max_bytes=120000", tok, rows, num_shards=2, shard_index=i, num_workers=0,
                               progress=False)
        assert task["pieces"] == 1
    info = merge_prepared([rows], progress=False)
    assert prepare_sources(["builtin?max_bytes=120000"], tok, rows, num_workers=0, progress=False) == info  # done
    same_tokens(rows / info["datasets"][0]["folder"], reference("builtin?max_bytes=120000", tok, tmp_path / "rows-ref"))
    with pytest.raises(FileNotFoundError, match="holds no pieces to merge"):
        merge_prepared([tmp_path / "nothing"])

    lines = (work / "corpus" / "rows.jsonl").read_text().splitlines()
    files = [tmp_path / f"hf-{i}.jsonl" for i in range(3)]
    for i, f in enumerate(files):
        f.write_text("".join(line + "\n" for line in lines[i::3]))
    spec = "hf:json?data_files=" + ",".join(map(str, files))
    hf = prepare_sources(spec, tok, tmp_path / "hf", num_workers=0, progress=False)
    assert json.loads((tmp_path / "hf" / hf["datasets"][0]["folder"] / "manifest.json").read_text())["recipe"]["pieces"] == 3
    same_tokens(tmp_path / "hf" / hf["datasets"][0]["folder"], reference(spec, tok, tmp_path / "hf-ref"))

    pool = prepare_sources(str(work / "corpus"), str(work / "tok.bpe.json"), tmp_path / "pool", num_workers=2,
                           piece_bytes=50_000, progress=False)  # several pieces: two processes take whole ones
    same_tokens(tmp_path / "pool" / pool["datasets"][0]["folder"], reference(work / "corpus", tok, tmp_path / "pool-ref"))


def test_pieces_on_two_disks_merge_into_a_third_folder(work, tmp_path, capsys):
    """Tasks that wrote to their own nodes' disks: `--merge A B --out C` joins the pieces of both."""
    from minillm.cli import main
    from minillm.tokenizer import Tokenizer

    for i, disk in enumerate(("a", "b")):
        assert main(["prepare", "--data", str(work / "corpus" / "lib"), "--tokenizer", str(work / "tok.bpe.json"),
                     "--out", str(tmp_path / disk), "--num-shards", "2", "--shard-index", str(i), "--num-workers", "0",
                     "--no-progress"]) == 0
    assert main(["prepare", "--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--no-progress"]) == 2
    assert "say where the result goes with --out" in capsys.readouterr().err
    assert main(["prepare", "--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c"),
                 "--no-progress"]) == 0
    info = json.loads((tmp_path / "c" / "prepared.json").read_text())
    tok = Tokenizer.load(work / "tok.bpe.json")
    same_tokens(tmp_path / "c" / info["datasets"][0]["folder"], reference(work / "corpus" / "lib", tok, tmp_path / "r"))


def test_max_tokens_keeps_the_first_documents_up_to_the_count(work, tmp_path, capsys):
    """`--max-tokens 2e4`: the documents of the stream, in order, up to the one that reaches 20,000 tokens; counted
    here by encoding the documents one by one."""
    from minillm.cli import main
    from minillm.corpora import Source
    from minillm.tokenizer import Tokenizer

    assert main(["prepare", "--data", str(work / "corpus"), "--tokenizer", str(work / "tok.bpe.json"), "--out",
                 str(tmp_path / "o"), "--max-tokens", "2e4", "--num-workers", "0", "--no-progress"]) == 0
    tok, total, kept = Tokenizer.load(work / "tok.bpe.json"), 0, collections.Counter()
    for doc in Source.parse(str(work / "corpus")).documents():
        if doc.text and total < 20_000:
            ids = tok.encode(doc.text, bos=True, eos=True)
            total += len(ids)
            kept[tuple(ids)] += 1
    info = json.loads((tmp_path / "o" / "prepared.json").read_text())
    folder = tmp_path / "o" / info["datasets"][0]["folder"]
    assert info["datasets"][0]["tokens"] == total >= 20_000
    assert documents(folder, "train") + documents(folder, "val") == kept


# ------------------------------------------------------------------------------------------- resume


def test_an_interrupted_preparation_goes_on_from_its_finished_pieces(work, tmp_path):
    """A bad line in the last file stops the run in its last piece: the pieces before it are published, nothing
    else is (no merged folder, no prepared.json, no half-written piece). Fixed, the next run keeps the finished
    pieces as they are (the very files on disk) and ends with the tokens of a single pass."""
    import shutil

    from minillm.prepare import prepare_sources
    from minillm.tokenizer import Tokenizer

    tok = Tokenizer.load(work / "tok.bpe.json")
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    shutil.copytree(work / "corpus" / "lib", corpus)
    (corpus / "zz.jsonl").write_text('{"text": "fine"}\n{"text": "oops"]\n')  # sorted last, in the last piece
    kw = dict(num_workers=0, piece_bytes=sum(p.stat().st_size for p in corpus.iterdir()) // 3 + 1, progress=False)
    with pytest.raises(ValueError, match="zz.jsonl:2: not a JSON line"):
        prepare_sources(str(corpus), tok, out, **kw)
    plan = json.loads((out / "parts" / "plan.json").read_text())["sources"][0]
    finished = sorted(p.name for p in (out / "parts" / plan["slug"]).iterdir())
    assert plan["count"] == 3 and finished == ["piece-00000-of-00003", "piece-00001-of-00003"]  # nothing hidden either
    assert not (out / "prepared.json").exists() and not (out / plan["slug"]).exists()
    kept = {(out / "parts" / plan["slug"] / n / "train-00000.bin").stat().st_ino for n in finished}
    (corpus / "zz.jsonl").write_text('{"text": "fine"}\n{"text": "oops"}\n')  # fixed (the same size)
    killed = out / "parts" / plan["slug"] / ".piece-00002-of-00003.x1y2.tmp"  # what a run killed midway leaves
    killed.mkdir()
    info = prepare_sources(str(corpus), tok, out, **kw)
    assert not killed.exists()
    merged = out / info["datasets"][0]["folder"]
    shards = json.loads((merged / "manifest.json").read_text())["splits"]["train"]["shards"]
    assert kept <= {(merged / s["file"]).stat().st_ino for s in shards}  # the same files, linked, not made again
    same_tokens(merged, reference(corpus, tok, tmp_path / "ref"))


# ------------------------------------------------------------------------------------------- training


def test_train_refuses_a_dataset_it_cannot_bound(tmp_path, capsys):
    from minillm.cli import main
    from minillm.prepare import check_trainable

    for data in (["hf:cerebras/SlimPajama-627B"], ["tinyllama"], ["builtin", "hf:roneneldan/TinyStories"]):
        assert main(["train", "--preset", "debug", "--out", str(tmp_path / "run"), "--data", *data]) == 2
        line = capsys.readouterr().err.strip()
        assert "\n" not in line and line.startswith("minillm train: error: hf:") and "minillm prepare" in line, line
    assert [s.spec for s in check_trainable("hf:roneneldan/TinyStories?max_bytes=1000000")] == \
        ["hf:roneneldan/TinyStories?max_bytes=1000000"]  # a slice it can bound is fine


def test_train_reads_a_prepared_folder_without_its_text(work, tmp_path):
    """`minillm train --data OUT`: the tokens and the tokenizer kept with them, whose size the model's vocabulary
    takes; the text is gone and nothing is tokenized again (the run folder's data cache stays empty)."""
    import shutil

    from minillm.config import LlamaConfig
    from minillm.prepare import prepare_sources
    from minillm.train import TrainConfig, train_run

    text = tmp_path / "text"
    shutil.copytree(work / "corpus", text)
    info = prepare_sources(str(text), str(work / "tok.bpe.json"), tmp_path / "prepared", num_workers=0, progress=False)
    shutil.rmtree(text)
    tcfg = TrainConfig.from_preset("debug", out_dir=str(tmp_path / "run"), data=(f"{tmp_path / 'prepared'}@2",),
                                   max_steps=2, eval_every=0, eval_batches=1, save_every=0, sample_tokens=0,
                                   device="cpu", seq_len=32, global_batch=4, micro_batch=4)
    res = train_run(LlamaConfig.from_name("debug"), tcfg, progress=False, verbose=False)
    assert res.step == 2 and res.val_bpb is not None
    cache = tmp_path / "run" / "data"
    assert not cache.exists() or not any(cache.iterdir())  # no tokenizer trained, no text tokenized
    from minillm.tokenizer import Tokenizer
    from minillm.train import Checkpoint

    ckpt = Checkpoint(res.checkpoint)
    assert ckpt.state["loader"]["data"] == [[f"{info['datasets'][0]['fingerprint']}:train", 1.0]]
    assert ckpt.config.vocab_size == Tokenizer.load(work / "tok.bpe.json").vocab_size == 300  # not debug's 512
    # more data for that run: `minillm prepare --tokenizer RUN` takes the tokenizer the run trained with
    from minillm.cli import main

    assert main(["prepare", "--data", str(work / "corpus"), "--tokenizer", str(tmp_path / "run"), "--out",
                 str(tmp_path / "more"), "--num-workers", "0", "--no-progress"]) == 0
    from minillm.prepare import prepared_tokenizer

    assert prepared_tokenizer((str(tmp_path / "more"),)).fingerprint == Tokenizer.load(work / "tok.bpe.json").fingerprint


def _agreement_worker(folders: list) -> list:
    """One process of a run: open the prepared folder this rank is given (as if on its own node's disk) and agree on
    the data with the others; what each round said."""
    from minillm.data import Mixture
    from minillm.distributed import destroy_distributed, init_distributed
    from minillm.prepare import agree_on_data, data_fingerprint, prepared_datasets

    env = init_distributed("cpu")
    said = []
    for per_rank in folders:  # one round per layout: each entry is every rank's folder
        try:
            seen = data_fingerprint(Mixture(prepared_datasets(per_rank[env.rank])))
        except (ValueError, FileNotFoundError) as e:
            seen = e
        try:
            agree_on_data(seen, env.device)
            said.append("ok")
        except (ValueError, FileNotFoundError) as e:
            said.append(f"{type(e).__name__}: {e}")
    destroy_distributed(env)
    return said


def test_processes_that_see_different_data_stop_with_a_clear_error(work, tmp_path):
    """Two gloo processes: the same folder agrees; different folders (a run folder on each node's own disk) stop
    both with the same clear error; a rank that cannot open its data stops the other one too instead of leaving it
    waiting."""
    from minillm import distributed as D
    from minillm.prepare import prepare_sources

    a, b = tmp_path / "a", tmp_path / "b"
    prepare_sources(f"{work / 'corpus' / 'lib'}", str(work / "tok.bpe.json"), a, num_workers=0, progress=False)
    prepare_sources(f"{work / 'corpus' / 'rows.jsonl'}", str(work / "tok.bpe.json"), b, num_workers=0, progress=False)
    rounds = [[str(a), str(a)], [str(a), str(b)], [str(a), str(tmp_path / "missing")]]
    rank0, rank1 = D.spawn(_agreement_worker, 2, rounds)
    assert rank0[0] == rank1[0] == "ok"
    for said in (rank0[1], rank1[1]):
        assert said.startswith("ValueError: the processes of this run see different training data: rank 0 has "
                               "fingerprint"), said
        assert "rank 1" in said and "file system they share" in said
    assert rank1[2].startswith("FileNotFoundError") and "missing" in rank1[2]
    assert rank0[2] == ("ValueError: process(es) 1 of 2 could not open the training data (its own error says why): "
                        "every process must see the same data folders")


def test_prepare_command_line_errors(work, tmp_path, capsys):
    from minillm.cli import main

    base = ["prepare", "--data", str(work / "corpus"), "--tokenizer", str(work / "tok.bpe.json"), "--out",
            str(tmp_path / "o"), "--no-progress"]

    def error(argv):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"minillm {argv[0]}: error: ") and "\n" not in err, err
        return err

    assert "--num-shards and --shard-index go together" in error(base + ["--num-shards", "2"])
    assert "--tokenizer is required" in error(base[:3] + base[5:])
    assert "shard_index=3 must be below num_shards=3" in error(base + ["--num-shards", "3", "--shard-index", "3"])
    assert main(base + ["--num-shards", "3", "--shard-index", "1", "--num-workers", "0"]) == 0
    assert "task 2 of 3: 1 pieces (0 kept)" in capsys.readouterr().out
    err = error(["prepare", "--merge", str(tmp_path / "o")])
    assert "2 piece(s) are not prepared yet, e.g. piece 1 of 3 of" in err and "--shard-index 0" in err
    err = error(["train", "--preset", "debug", "--data", str(tmp_path / "o"), "--out", str(tmp_path / "run")])
    assert "its pieces are not merged yet (minillm prepare --merge" in err
    err = error(["prepare", "--data", str(tmp_path / "o"), "--tokenizer", str(work / "tok.bpe.json"), "--out",
                 str(tmp_path / "other")])
    assert "is already prepared (tokens, not text)" in err


# ------------------------------------------------------------------------------------------- a real Slurm


@pytest.mark.integration
def test_slurm_array_prepares_then_merges(work, tmp_path):
    """examples/slurm/prepare.sbatch on a one-node Slurm (examples/slurm/local-cluster.sh: root, apt): a job array of
    three tasks prepares a two-source mixture, a job that depends on it merges, and the result holds exactly what a
    single pass makes of each source."""
    import time

    from minillm.tokenizer import Tokenizer

    assert os.geteuid() == 0, "this test installs and starts Slurm: run it as root"
    subprocess.run(["bash", str(ROOT / "examples/slurm/local-cluster.sh")], check=True, capture_output=True)
    script = (ROOT / "examples/slurm/prepare.sbatch").read_text()
    for old, new in (("--cpus-per-task=64", f"--cpus-per-task={os.cpu_count()}"), ("--time=12:00:00", "--time=20:00"),
                     ("--job-name=minillm-prepare", "--job-name=minillm-prepare-test\n#SBATCH --partition=low")):
        assert old in script, old
        script = script.replace(old, new)
    job_file = tmp_path / "prepare.sbatch"
    job_file.write_text(script)
    out = tmp_path / "prepared"
    e = dict(env(), DATA=f"{work / 'corpus' / 'lib'}@0.7 {work / 'corpus' / 'rows.jsonl'}@0.3",
             TOKENIZER=str(work / "tok.bpe.json"), OUT=str(out), WORKERS="1",
             PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")

    def sbatch(*args):
        return subprocess.run(["sbatch", "--parsable", *map(str, args)], cwd=tmp_path, env=e, capture_output=True,
                              text=True, check=True).stdout.strip().split(";")[0]

    array = sbatch("--array=0-2", job_file)
    merge = sbatch(f"--dependency=afterok:{array}", job_file, "merge")
    try:
        deadline = time.time() + 600
        while time.time() < deadline and not (out / "prepared.json").exists():
            time.sleep(2)
        logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("minillm-prepare-test-*.out")))
        assert (out / "prepared.json").exists(), logs[-4000:]
    finally:
        subprocess.run(["scancel", array, merge], capture_output=True)
    assert "task 0 of 3" in logs and "task 2 of 3" in logs and "merging the pieces" in logs, logs[-4000:]
    info = json.loads((out / "prepared.json").read_text())
    assert [d["weight"] for d in info["datasets"]] == [0.7, 0.3]
    tok = Tokenizer.load(work / "tok.bpe.json")
    for d, source in zip(info["datasets"], ("lib", "rows.jsonl")):
        same_tokens(out / d["folder"], reference(work / "corpus" / source, tok, tmp_path / f"ref-{source}"))
