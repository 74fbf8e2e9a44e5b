"""Tests for minillm.data: packed shards and their manifest, the loader's invariants, bad inputs.

Kept light at import time: worker processes (spawned) import this module to unpickle the stand-in tokenizers.
"""
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from minillm import corpora as C
from minillm import data as D
from minillm.prepare import prepare_mixture


class ByteTok:
    """Stand-in with the Tokenizer interface: byte b -> id b + offset; BOS and EOS are the last two ids."""

    def __init__(self, vocab_size=258, offset=0):
        assert vocab_size >= 256 + offset + 2
        self.vocab_size, self.offset = vocab_size, offset
        self.bos_id, self.eos_id = vocab_size - 2, vocab_size - 1
        self.fingerprint = hashlib.sha256(f"bytes:{vocab_size}:{offset}".encode()).hexdigest()

    def encode(self, text, bos=False, eos=False):
        return [self.bos_id] * bos + [b + self.offset for b in text.encode("utf-8")] + [self.eos_id] * eos

    def encode_batch(self, texts, bos=False, eos=False):
        return [self.encode(t, bos=bos, eos=eos) for t in texts]

    def decode(self, ids):
        return bytes(i - self.offset for i in ids if self.offset <= i < self.offset + 256).decode("utf-8")


class ExplodingTok(ByteTok):
    "Fails on any document containing BOOM (a worker error midway)."

    def encode(self, text, bos=False, eos=False):
        if "BOOM" in text:
            raise RuntimeError("tokenizer exploded on purpose")
        return super().encode(text, bos=bos, eos=eos)


class BadIdTok(ByteTok):
    "Returns an id outside its vocabulary."

    def encode(self, text, bos=False, eos=False):
        return super().encode(text, bos=bos, eos=eos) + [self.vocab_size + 5]


def corpus(n=40, seed=0):
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "épsilon", "zeta", "def", "return", "(x)", "\n"]
    return [f"doc {i}: " + " ".join(rng.choice(words, size=int(rng.integers(5, 60)))) for i in range(n)]


def framed(texts, tok, bos=True, eos=True):
    return [i for t in texts for i in tok.encode(t, bos=bos, eos=eos)]


def shard_tokens(folder, manifest, split):
    dtype = np.dtype(manifest["dtype"])
    return np.concatenate([np.fromfile(Path(folder) / s["file"], dtype=dtype) for s in manifest["splits"][split]["shards"]])


def make(tmp_path, texts=None, tok=None, name="ds", **kw):
    kw = {"num_workers": 0, "progress": False, "val_fraction": 0.1, **kw}
    tok = tok or ByteTok()
    out = tmp_path / name
    return out, D.prepare(corpus() if texts is None else texts, tok, out, name=name, **kw)


# ---------------------------------------------------------------- shards and manifest


def test_shard_dtype_boundaries():
    assert D.shard_dtype(258) == np.uint16
    assert D.shard_dtype(32000) == np.uint16
    assert D.shard_dtype(65536) == np.uint16
    assert D.shard_dtype(65537) == np.uint32
    with pytest.raises(ValueError, match="vocab_size"):
        D.shard_dtype(0)


def test_manifest_counts_hashes_and_identity(tmp_path):
    texts = corpus(60)
    tok = ByteTok()
    out, m = make(tmp_path, texts, tok, shard_tokens=500)
    longest = max(len(tok.encode(t, bos=True, eos=True)) for t in texts)
    assert m["format"] == D.FORMAT and m["dtype"] == "uint16"
    assert m["tokenizer"] == dict(fingerprint=tok.fingerprint, vocab_size=258, bos_id=256, eos_id=257)
    assert (m["bos"], m["eos"]) == (True, True)
    assert m["source"] == "ds"
    assert m["documents"] == 60
    assert m["bytes"] == sum(len(t.encode()) for t in texts)
    assert m["tokens"] == len(framed(texts, tok))
    for split in ("train", "val"):
        info = m["splits"][split]
        assert info["documents"] > 0
        assert len(info["shards"]) >= (2 if split == "train" else 1)
        for key in ("tokens", "documents", "bytes"):
            assert info[key] == sum(s[key] for s in info["shards"])
        for s in info["shards"]:
            p = out / s["file"]
            assert p.stat().st_size == 2 * s["tokens"]
            assert hashlib.sha256(p.read_bytes()).hexdigest() == s["sha256"]
            # a shard closes at the first document boundary at or past shard_tokens
            assert s["tokens"] < 500 + longest
        assert all(s["tokens"] >= 500 for s in info["shards"][:-1])
    for key in ("tokens", "documents", "bytes"):
        assert m[key] == m["splits"]["train"][key] + m["splits"]["val"][key]
    # nothing else lies in the folder, and no temporary folder is left next to it
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json"] + [s["file"] for v in m["splits"].values() for s in v["shards"]])
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_uint32_shards_hold_large_ids(tmp_path):
    tok = ByteTok(vocab_size=70_000, offset=65_000)  # byte ids 65000..65255, BOS/EOS 69998/69999
    texts = corpus(10)
    out, m = make(tmp_path, texts, tok, val_fraction=0.0, min_val_documents=0)
    assert m["dtype"] == "uint32"
    got = shard_tokens(out, m, "train")
    assert got.dtype == np.uint32 and got.max() == 69_999
    assert got.tolist() == framed(texts, tok)
    ds = D.TokenDataset(out, tokenizer=tok, check_ids=True, verify=True)
    assert ds.dtype == np.uint32


@pytest.mark.parametrize("bos,eos", [(True, True), (True, False), (False, True), (False, False)])
def test_bos_eos_policy(tmp_path, bos, eos):
    tok = ByteTok()
    texts = ["first document", "second", "third one here"]
    out, m = make(tmp_path, texts, tok, bos=bos, eos=eos, val_fraction=0.0, min_val_documents=0)
    got = shard_tokens(out, m, "train").tolist()
    expected = []
    for t in texts:
        expected += ([256] if bos else []) + list(t.encode()) + ([257] if eos else [])
    assert got == expected
    assert (m["bos"], m["eos"]) == (bos, eos)
    assert got.count(256) == (3 if bos else 0) and got.count(257) == (3 if eos else 0)
    if bos:
        assert got[0] == 256  # Llama style: every document starts with BOS, nothing pads the shard


def test_split_is_deterministic_and_disjoint(tmp_path):
    tok = ByteTok()
    texts = corpus(200) + corpus(5)  # the last 5 duplicate earlier texts: duplicates never straddle the split
    out, m = make(tmp_path, texts, tok, val_fraction=0.2, min_val_documents=3)
    decoded = {}
    for split in ("train", "val"):
        ids = shard_tokens(out, m, split).tolist()
        docs, cur = [], []
        for i in ids:
            if i == tok.bos_id:
                cur = []
            elif i == tok.eos_id:
                docs.append(tok.decode(cur))
            else:
                cur.append(i)
        decoded[split] = docs
    assert len(decoded["val"]) == m["splits"]["val"]["documents"]
    assert set(decoded["train"]).isdisjoint(decoded["val"])
    assert sorted(decoded["train"] + decoded["val"]) == sorted(texts)
    assert texts[0] in decoded["val"] and texts[2] in decoded["val"]  # the first min_val_documents
    assert 0.1 < len(decoded["val"]) / len(texts) < 0.35
    # the rule itself: the same decisions on every pass over the stream
    a, b = C.Splitter(0.2, 3), C.Splitter(0.2, 3)
    assert [a(t) for t in texts] == [b(t) for t in texts]
    only_first = C.Splitter(0.0, 1)
    assert [only_first(t) for t in ["x", "y", "x", "z"]] == ["val", "train", "val", "train"]
    with pytest.raises(ValueError, match="val_fraction"):
        C.Splitter(1.0)
    # a different chunking gives the very same shards
    out2, m2 = make(tmp_path, texts, tok, name="ds2", val_fraction=0.2, min_val_documents=3, chunk_bytes=100)
    assert m2["fingerprint"] == m["fingerprint"]


def test_parallel_workers_give_identical_shards(tmp_path):
    texts = corpus(80)
    _, serial = make(tmp_path, texts, name="serial", chunk_bytes=300)
    _, parallel = make(tmp_path, texts, name="parallel", chunk_bytes=300, num_workers=2)
    assert parallel["fingerprint"] == serial["fingerprint"]
    assert parallel["splits"] == serial["splits"]


def test_rerun_reuses_and_refuses_other_recipes(tmp_path):
    out, m = make(tmp_path)
    shard = out / m["splits"]["train"]["shards"][0]["file"]
    mtime = shard.stat().st_mtime_ns
    _, again = make(tmp_path)
    assert again == m and shard.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match=r"another recipe \(differs in: eos\).*overwrite=True"):
        make(tmp_path, eos=False)
    _, other = make(tmp_path, eos=False, overwrite=True)
    assert other["eos"] is False and (out / "manifest.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    (out / other["splits"]["train"]["shards"][0]["file"]).unlink()
    with pytest.raises(ValueError, match="incomplete copy of these tokens"):
        make(tmp_path, eos=False)
    _, repaired = make(tmp_path, eos=False, overwrite=True)
    assert repaired == other
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a token dataset"):
        make(tmp_path, name="junk")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_failure_midway_leaves_nothing(tmp_path, num_workers):
    texts = corpus(50)
    texts[37] += " BOOM"
    with pytest.raises(RuntimeError, match="exploded on purpose"):
        make(tmp_path, texts, ExplodingTok(), num_workers=num_workers, chunk_bytes=200)
    assert list(tmp_path.iterdir()) == []  # no output folder, no temporary folder


def test_token_id_outside_vocab_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"token id 263 is outside the vocabulary 0\.\.257 \(document starting 'doc 0"):
        make(tmp_path, tok=BadIdTok())
    assert list(tmp_path.iterdir()) == []


def test_empty_corpus_and_all_val(tmp_path):
    with pytest.raises(ValueError, match="empty corpus"):
        make(tmp_path, [])
    with pytest.raises(ValueError, match="empty corpus"):
        make(tmp_path, ["", ""])
    with pytest.raises(ValueError, match="no training documents"):
        make(tmp_path, ["only one"], min_val_documents=1)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="val_fraction"):
        make(tmp_path, val_fraction=1.5)


# ---------------------------------------------------------------- TokenDataset checks


def test_token_dataset_opens_and_checks(tmp_path):
    tok = ByteTok()
    out, m = make(tmp_path, tok=tok)
    ds = D.TokenDataset(out, tokenizer=tok, check_ids=True, verify=True)
    assert len(ds) == m["splits"]["train"]["tokens"] and ds.n_documents == m["splits"]["train"]["documents"]
    assert ds.vocab_size == 258 and ds.fingerprint.endswith(":train")
    assert ds.open_split("val").n_tokens == m["splits"]["val"]["tokens"]
    assert "TokenDataset(" in repr(ds)


def test_token_dataset_bad_inputs(tmp_path):
    tok = ByteTok()
    with pytest.raises(FileNotFoundError, match="no token dataset at"):
        D.TokenDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no readable manifest.json"):
        D.TokenDataset(tmp_path / "empty")
    out, m = make(tmp_path, tok=tok, shard_tokens=10**6)
    with pytest.raises(ValueError, match=r"another tokenizer .*vocab 258.*vocab 300"):
        D.TokenDataset(out, tokenizer=ByteTok(vocab_size=300))
    with pytest.raises(ValueError, match="no split 'test'"):
        D.TokenDataset(out, "test")
    shard = out / m["splits"]["train"]["shards"][0]["file"]
    arr = np.fromfile(shard, dtype=np.uint16)
    arr[5] = 300  # an id >= vocab_size, same file size
    arr.tofile(shard)
    D.TokenDataset(out)  # cheap checks pass...
    with pytest.raises(ValueError, match="token id 300 >= vocab_size 258"):
        D.TokenDataset(out, check_ids=True)
    with pytest.raises(ValueError, match="sha256"):
        D.TokenDataset(out, verify=True)
    arr[:-1].tofile(shard)  # truncated
    with pytest.raises(ValueError, match="truncated"):
        D.TokenDataset(out)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        D.TokenDataset(out)
    out2, _ = make(tmp_path, name="noval", val_fraction=0.0, min_val_documents=0)
    with pytest.raises(ValueError, match="'val' split .* is empty: prepare with val_fraction > 0"):
        D.TokenDataset(out2, "val")


# ---------------------------------------------------------------- loader


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loader")
    out, _ = make(tmp, corpus(120), shard_tokens=2000)
    return D.TokenDataset(out)


def collect(loader, step):
    import torch

    xs, ys = zip(*loader.micro_batches(step))
    return torch.cat(xs), torch.cat(ys)


def test_loader_shapes_targets_and_determinism(dataset):
    import torch

    a = D.Loader(dataset, seq_len=32, global_batch=8, micro_batch=2, seed=3)
    b = D.Loader(dataset, seq_len=32, global_batch=8, micro_batch=2, seed=3)
    assert a.accum == 4
    batches = list(a.micro_batches(7))
    assert len(batches) == 4
    for x, y in batches:
        assert x.shape == y.shape == (2, 32) and x.dtype == y.dtype == torch.long
        assert torch.equal(x[:, 1:], y[:, :-1])
    x, y = collect(a, 7)
    assert torch.equal(x, collect(b, 7)[0])
    g = a.global_batch_at(7)
    assert torch.equal(x, torch.from_numpy(g[:, :-1])) and torch.equal(y, torch.from_numpy(g[:, 1:]))
    assert not torch.equal(x, collect(a, 8)[0])
    assert not torch.equal(x, collect(D.Loader(dataset, 32, 8, 2, seed=4), 7)[0])
    # every window is a real stretch of one shard
    for j in range(8):
        c, shard, start = a.locate(7, j)
        assert np.array_equal(a.sample(7, j), dataset.shards[shard][start:start + 33])


@pytest.mark.parametrize("world_size,micro_batch", [(2, 3), (3, 2), (6, 1), (2, 1), (3, 4)])
def test_loader_world_size_independence(dataset, world_size, micro_batch):
    import torch

    G = 12 if world_size * micro_batch <= 12 and 12 % (world_size * micro_batch) == 0 else 24
    reference = collect(D.Loader(dataset, 16, G, G, seed=1), step=4)
    xs, ys = [], []
    for rank in range(world_size):
        loader = D.Loader(dataset, 16, G, micro_batch, seed=1, rank=rank, world_size=world_size)
        assert loader.accum == G // (micro_batch * world_size)
        x, y = collect(loader, 4)
        assert x.shape == (G // world_size, 16)
        xs.append(x)
        ys.append(y)
    assert torch.equal(torch.cat(xs), reference[0]) and torch.equal(torch.cat(ys), reference[1])


def test_one_process_accum4_equals_two_processes_accum2(dataset):
    import torch

    one = D.Loader(dataset, 16, 8, 2, seed=0)
    assert one.accum == 4
    two = [D.Loader(dataset, 16, 8, 2, seed=0, rank=r, world_size=2) for r in range(2)]
    assert two[0].accum == 2
    for step in (0, 1, 99):
        assert torch.equal(collect(one, step)[0], torch.cat([collect(l, step)[0] for l in two]))


def test_state_round_trip_resumes_exactly(dataset):
    import torch

    full = D.Loader(dataset, 16, 8, 2, seed=5)
    uninterrupted = [torch.cat([x for x, _ in next(full)]) for _ in range(6)]
    first = D.Loader(dataset, 16, 8, 2, seed=5)
    for _ in range(3):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    assert state["step"] == 3
    # resume on "2 processes" with another micro-batch: no replay, the same batches
    resumed = [D.Loader(dataset, 16, 8, 4, seed=5, rank=r, world_size=2) for r in range(2)]
    for l in resumed:
        l.load_state_dict(state)
    for k in range(3, 6):
        got = torch.cat([torch.cat([x for x, _ in next(l)]) for l in resumed])
        assert torch.equal(got, uninterrupted[k])
    assert resumed[0].step == 6


@pytest.mark.parametrize("key,kwargs", [("seed", dict(seed=6)), ("seq_len", dict(seq_len=8)),
                                        ("global_batch", dict(global_batch=16))])
def test_state_mismatch_is_refused(dataset, key, kwargs):
    state = D.Loader(dataset, 16, 8, 2, seed=5).state_dict()
    args = dict(seq_len=16, global_batch=8, micro_batch=2, seed=5) | kwargs
    with pytest.raises(ValueError, match=f"cannot resume: the saved loader has {key}="):
        D.Loader(dataset, **args).load_state_dict(state)


def test_state_mismatch_on_data(dataset, tmp_path):
    state = D.Loader(dataset, 16, 8, 2).state_dict()
    out, _ = make(tmp_path, corpus(30, seed=9))
    with pytest.raises(ValueError, match="cannot resume: the saved loader has data="):
        D.Loader(D.TokenDataset(out), 16, 8, 2).load_state_dict(state)
    with pytest.raises(ValueError, match="not a loader state"):
        D.Loader(dataset, 16, 8, 2).load_state_dict({"step": 3})


def test_loader_bad_inputs(dataset):
    with pytest.raises(ValueError, match=r"global_batch=12 is not divisible by .* = 8: with world_size=2, "
                                         r"micro_batch can be 1, 2, 3, 6"):
        D.Loader(dataset, 16, 12, 4, world_size=2)
    with pytest.raises(ValueError, match=r"must be a multiple of world_size=4, e.g. 12"):
        D.Loader(dataset, 16, 10, 3, world_size=4)
    with pytest.raises(ValueError, match=r"too short for seq_len=100000: a window needs seq_len \+ 1 = 100001"):
        D.Loader(dataset, 100_000, 8, 2)
    with pytest.raises(ValueError, match="rank=2 must be in 0..1"):
        D.Loader(dataset, 16, 8, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="micro_batch=0 must be a positive integer"):
        D.Loader(dataset, 16, 8, 0)
    with pytest.raises(ValueError, match="seed=-1 must be a non-negative integer"):
        D.Loader(dataset, 16, 8, 2, seed=-1)


def test_mixture_weights_respected(tmp_path):
    low = ByteTok(vocab_size=600, offset=0)  # bytes -> 0..255
    high = ByteTok(vocab_size=600, offset=0)
    a, _ = make(tmp_path, corpus(30), low, name="a")
    # dataset b: same tokenizer, texts made only of one byte so its windows are recognizable
    b, _ = make(tmp_path, ["~" * 500] * 1 + ["~" * 400 + str(i) for i in range(20)], high, name="b")
    mix = D.Mixture([(D.TokenDataset(a), 1), (D.TokenDataset(b), 3)])
    assert mix.weights == [0.25, 0.75]
    loader = D.Loader(mix, 16, 64, 64, seed=0)
    picks = np.array([loader.locate(s, j)[0] for s in range(50) for j in range(64)])
    share = (picks == 1).mean()
    assert abs(share - 0.75) < 4 * math.sqrt(0.75 * 0.25 / len(picks))
    for j in range(64):  # a sample from b really comes from b
        c, _, _ = loader.locate(0, j)
        window = loader.sample(0, j)
        assert (np.mean(window == ord("~")) > 0.5) == (c == 1)
    with pytest.raises(ValueError, match="share one tokenizer"):
        other, _ = make(tmp_path, corpus(10), ByteTok(vocab_size=300), name="c")
        D.Mixture([(D.TokenDataset(a), 1), (D.TokenDataset(other), 1)])
    with pytest.raises(ValueError, match="positive number"):
        D.Mixture([(D.TokenDataset(a), 0)])
    with pytest.raises(ValueError, match="at least one"):
        D.Mixture([])


def test_eval_set_is_world_size_independent(dataset):
    import torch

    T = 16
    one = D.EvalSet(D.Loader(dataset, T, 6, 3), max_windows=20)
    assert len(one) == 20
    ref = [(x, y) for x, y in one.batches()]
    assert len(list(D.EvalSet(D.Loader(dataset, T, 6, 3), max_windows=20).batches())) == len(ref) == 7

    def real_rows(batches):
        return torch.cat([x[y[:, 0] != -100] for x, y in batches]), torch.cat([y[y[:, 0] != -100] for x, y in batches])

    rx, ry = real_rows(ref)
    assert rx.shape == (20, T)
    val = dataset.open_split("val")
    c, k, start = one.windows[0]
    assert np.array_equal(rx[0].numpy(), val.shards[k][start:start + T])
    for W, b in [(2, 4), (4, 2), (3, 3)]:
        per_rank = [list(D.EvalSet(D.Loader(dataset, T, W * b, b, rank=r, world_size=W),
                                   max_windows=20).batches()) for r in range(W)]
        assert len({len(p) for p in per_rank}) == 1  # the same number of forward passes on every rank
        for p in per_rank:
            for x, y in p:
                assert x.shape == y.shape == (b, T)
                pad = y[:, 0] == -100
                assert bool((y[pad] == -100).all())
        gx, gy = real_rows([xy for p in per_rank for xy in p])
        assert torch.equal(gx, rx) and torch.equal(gy, ry)
    # the whole val split when max_windows is not given: consecutive windows of T tokens
    whole = D.EvalSet(D.Loader(dataset, T, 8, 2))
    assert len(whole) == sum((len(s) - 1) // T for s in val.shards)
    # bits per byte: loss / ln 2 * tokens / bytes
    expected = math.log(258) / math.log(2) * val.n_tokens / val.n_bytes
    assert one.bits_per_byte(math.log(258)) == pytest.approx(expected)


def test_eval_set_too_short(tmp_path):
    out, _ = make(tmp_path, corpus(40), min_val_documents=1, val_fraction=0.0)
    loader = D.Loader(D.TokenDataset(out), 1000, 2, 1)
    with pytest.raises(ValueError, match="val split is shorter than one window"):
        D.EvalSet(loader)


# ---------------------------------------------------------------- sources


def test_hf_streaming_and_saved_dataset(tmp_path, monkeypatch):
    import datasets
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    files = []
    for i in range(2):
        p = tmp_path / f"part{i}.jsonl"
        p.write_text("".join(json.dumps({"story": f"story {i}.{k}", "meta": {}}) + "\n" for k in range(3)))
        files.append(str(p))
    src = C.Source.parse(f"hf:json?data_files={','.join(files)}&field=story&max_documents=5")
    docs = list(src.documents())
    assert [d.text for d in docs] == ["story 0.0", "story 0.1", "story 0.2", "story 1.0", "story 1.1"]
    # the real streaming path: load_dataset(..., streaming=True) returns an IterableDataset
    ds = datasets.load_dataset("json", data_files=files, split="train", streaming=True)
    assert isinstance(ds, datasets.IterableDataset)
    with pytest.raises(ValueError, match=r"no field 'text' \(fields: story, meta\)"):
        list(C.hf_documents("json", data_files=files))
    saved = tmp_path / "saved"
    datasets.Dataset.from_list([{"text": "saved one"}, {"text": "saved two"}]).save_to_disk(str(saved))
    assert [d.text for d in C.parse_data(f"hf:{saved}")[0].documents()] == ["saved one", "saved two"]
    # and into shards
    tok = ByteTok()
    m = D.prepare(f"hf:{saved}", tok, tmp_path / "tok", num_workers=0, progress=False, val_fraction=0.0, min_val_documents=0)
    assert m["documents"] == 2 and "hf:" in m["source"]
    assert shard_tokens(tmp_path / "tok", m, "train").tolist() == framed(["saved one", "saved two"], tok)


def test_prepare_mixture_reuses_folders(tmp_path):
    tok = ByteTok()
    a = tmp_path / "a.txt"
    a.write_text("\n".join(corpus(5)))
    b = tmp_path / "b.jsonl"
    b.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus(30, seed=1)))
    kw = dict(num_workers=0, progress=False, val_fraction=0.2, min_val_documents=0)
    with pytest.raises(ValueError, match="no training documents|empty"):
        prepare_mixture([f"{a}@1"], tok, tmp_path / "cache", **{**kw, "min_val_documents": 1})
    mix = prepare_mixture([f"{b}@3", f"{b}?max_documents=10@1"], tok, tmp_path / "cache", **kw)
    assert mix.weights == [0.75, 0.25] and len({ds.path for ds in mix.datasets}) == 2
    again = prepare_mixture([f"{b}@3", f"{b}?max_documents=10@1"], tok, tmp_path / "cache", **kw)
    assert again.identity == mix.identity
    with pytest.raises(ValueError, match="is a mixture of 2 sources"):
        D.prepare("tinyllama", tok, tmp_path / "x")



def test_edited_local_text_is_tokenized_again(tmp_path):
    "The cache key of a local source covers its files: editing one never reuses the old tokens."
    tok = ByteTok()
    b = tmp_path / "b.jsonl"
    b.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus(30, seed=1)))
    kw = dict(num_workers=0, progress=False, val_fraction=0.2, min_val_documents=0)
    before = prepare_mixture([str(b)], tok, tmp_path / "cache", **kw)
    fp = C.local_fingerprint(b)
    b.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus(40, seed=2)))
    assert C.local_fingerprint(b) != fp
    after = prepare_mixture([str(b)], tok, tmp_path / "cache", **kw)
    assert after.datasets[0].path != before.datasets[0].path
    assert len(after.datasets[0]) != len(before.datasets[0])
    with pytest.raises(FileNotFoundError, match="no such file or folder: .*gone"):
        C.local_fingerprint(tmp_path / "gone")

class NoBosTok(ByteTok):
    "A tokenizer without a BOS token (some have none)."

    def __init__(self):
        super().__init__()
        self.bos_id = None


def test_tokenizer_without_bos_and_broken_text(tmp_path):
    with pytest.raises(ValueError, match="bos=True, but the tokenizer has no BOS token: pass bos=False"):
        make(tmp_path, tok=NoBosTok())
    out, m = make(tmp_path, tok=NoBosTok(), bos=False, name="nobos")
    assert m["tokenizer"]["bos_id"] is None
    # a lone surrogate has no UTF-8 bytes: it is tokenized (and counted) as '?'
    out, m = make(tmp_path, ["ok \ud800 text"], val_fraction=0.0, min_val_documents=0, name="surrogate")
    assert shard_tokens(out, m, "train").tolist() == framed(["ok ? text"], ByteTok())
    assert m["bytes"] == len("ok ? text")


def test_unguarded_script_fails_clearly(tmp_path):
    "Spawned workers import the main module: a script without a __main__ guard gets a clear error, not a hang."
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from minillm import data as D\n"
        "from test_data import ByteTok\n"
        f"D.prepare([f'text {{i}}' for i in range(20)], ByteTok(), {str(tmp_path / 'out')!r}, num_workers=2,\n"
        "          progress=False, chunk_bytes=20)\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode != 0
    assert "must do so under `if __name__ == '__main__':`" in res.stderr
    assert not (tmp_path / "out").exists()


def test_real_tokenizer_pickled_and_from_file(tmp_path):
    "The package's Tokenizer: sent pickled to workers, or loaded from its file by each; the same shards either way."
    from minillm.tokenizer import Tokenizer

    texts = corpus(60)
    tok = Tokenizer.train(texts, vocab_size=300)
    path = tok.save(tmp_path / "tok.json")
    kw = dict(progress=False, val_fraction=0.1, chunk_bytes=400, num_workers=2)
    pickled = D.prepare(texts, tok, tmp_path / "pickled", name="c", **kw)
    from_file = D.prepare(texts, str(path), tmp_path / "from_file", name="c", **kw)
    assert pickled["fingerprint"] == from_file["fingerprint"]
    assert pickled["tokenizer"] == dict(fingerprint=tok.fingerprint, vocab_size=300, bos_id=tok.bos_id, eos_id=tok.eos_id)
    split = C.Splitter(0.1, 1)
    train = [t for t in texts if split(t) == "train"]
    assert shard_tokens(tmp_path / "pickled", pickled, "train").tolist() == framed(train, tok)
    ds = D.TokenDataset(tmp_path / "from_file", tokenizer=Tokenizer.load(path), check_ids=True, verify=True)
    x, y = next(D.Loader(ds, 16, 4, 2, seed=0))[0]
    assert x.max() < 300 and tok.decode(x[0].tolist())
    with pytest.raises(ValueError, match="another tokenizer"):
        D.TokenDataset(tmp_path / "pickled", tokenizer=Tokenizer.train(texts, vocab_size=290))
