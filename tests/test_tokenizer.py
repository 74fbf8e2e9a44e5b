"""minillm.tokenizer against the libraries it must agree with (tiktoken, sentencepiece) and the naive trainer,
plus round trips, files, pickling and the errors users meet."""
import json
import pickle
import random
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pytest
import regex
import sentencepiece as spm
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minillm.tokenizer import (
    GPT4_SPLIT_PATTERN,
    TOKENIZER_FORMATS,
    BPETokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    TokenizerFormat,
    python_stdlib_texts,
    register_tokenizer_format,
    tinyllama_tokenizer_path,
    tokens_html,
    train_bpe,
    train_bpe_naive,
)
from minillm.tokenizer_files import read_sentencepiece_model

from conftest import TOKENIZER_TEXTS as MULTILINGUAL  # noqa: E402  (the texts the shared fixtures train on)

TRICKY = ["", " ", "  ", "\n", "\r\n", "\t\t", "\x00", "\x1b[31mred\x1b[0m", "\ufeffBOM", "e\u0301", "👩‍👩‍👧", "🇫🇷",
          "a" * 500, " " * 300, "<s>", "</s>", "<s></s>", "<unk>", "\U0010ffff", "\u200b\u200d", "x\ud7ff\ue000y",
          "trailing spaces   ", "12345678901234567890"]


def sp_reference(tok):
    return spm.SentencePieceProcessor(model_proto=tok.model_proto)


# ----------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("vocab_size", [256, 257, 300, 420])
def test_fast_trainer_matches_naive(vocab_size):
    texts = list(python_stdlib_texts(max_bytes=40_000)) + MULTILINGUAL
    fast = train_bpe(texts, vocab_size)
    naive = train_bpe_naive(texts, vocab_size)
    assert list(fast[0].items()) == list(naive[0].items())
    assert fast[1] == naive[1]
    assert len(fast[1]) == vocab_size


def test_fast_trainer_matches_naive_on_random_text():
    rng = random.Random(0)
    for trial in range(30):
        texts = ["".join(rng.choice("aab c\n") for _ in range(rng.randint(0, 60))) for _ in range(rng.randint(1, 5))]
        texts.append("aabaabc")  # at least a few pairs
        for pattern in (GPT4_SPLIT_PATTERN, r"[^\n]+"):
            try:
                naive = train_bpe_naive(texts, 290, pattern)
            except ValueError as e:
                with pytest.raises(ValueError, match="ran out of pairs"):
                    train_bpe(texts, 290, pattern)
                assert "ran out of pairs" in str(e)
                continue
            assert list(train_bpe(texts, 290, pattern)[0].items()) == list(naive[0].items()), (trial, texts)


def test_ties_break_to_the_smallest_pair():
    # every pair occurs once: the first merge must be the smallest pair of ids, (ord('a'), ord('b'))
    merges, vocab = train_bpe(["yz ab cd"], 257)
    counts = {}
    for chunk in regex.findall(GPT4_SPLIT_PATTERN, "yz ab cd"):
        b = chunk.encode()
        for p in zip(b, b[1:]):
            counts[p] = counts.get(p, 0) + 1
    assert list(merges) == [min(counts)]
    assert vocab[256] == bytes(min(counts))


def test_trained_vocab_has_distinct_tokens_and_prefix_property(corpus):
    merges, vocab = train_bpe(corpus, 700)
    assert len(set(vocab)) == len(vocab) == 700
    small_merges, small_vocab = train_bpe(corpus, 500)
    assert small_vocab == vocab[:500]  # greedy: a smaller vocabulary is a prefix of a larger one


def test_train_sizes_and_special_ids(bpe):
    assert bpe.vocab_size == 1000
    assert len(bpe.vocab) == 997
    assert bpe.special_tokens == {"<s>": 997, "</s>": 998, "<|user|>": 999}
    assert (bpe.bos_id, bpe.eos_id) == (997, 998)


# ----------------------------------------------------------------------------------------------- round trips


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_bpe_round_trip_any_unicode(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert all(0 <= i < len(bpe.vocab) for i in ids)  # plain text never yields a special token
    assert b"".join(bpe.token_bytes(i) for i in ids) == text.encode("utf-8")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2581")))
def test_sentencepiece_round_trip_any_unicode(sp, text):
    ids = sp.encode(text)
    assert sp.decode(ids) == text


@pytest.mark.parametrize("text", TRICKY + MULTILINGUAL)
def test_round_trip_tricky_strings(bpe, sp, text):
    assert bpe.decode(bpe.encode(text)) == text
    assert sp.decode(sp.encode(text)) == text


def test_sentencepiece_escaped_space_rule(sp):
    # SentencePiece writes spaces as U+2581; a U+2581 typed in the text decodes as a space, exactly as sentencepiece does
    text = "a\u2581b"
    assert sp.encode(text) == sp_reference(sp).encode(text)
    assert sp.decode(sp.encode(text)) == sp_reference(sp).decode(sp_reference(sp).encode(text)) == "a b"


@pytest.mark.parametrize("kind", ["bpe", "sp"])
@pytest.mark.parametrize("text", ["\ud800", "ok \udfff", "pair split: \ud83d\ude00"[:13]])
def test_lone_surrogates_raise(request, kind, text):
    tok = request.getfixturevalue(kind)
    with pytest.raises(ValueError, match=r"lone surrogate '\\ud[89a-f][0-9a-f]{2}' at index \d+"):
        tok.encode(text)
    with pytest.raises(ValueError, match="lone surrogate"):
        tok.encode_batch(["fine", text])


def test_decode_partial_character_is_replacement(bpe):
    ids = bpe.encode("世")
    if len(ids) > 1:  # split over tokens: a prefix decodes to U+FFFD
        assert "\ufffd" in bpe.decode(ids[:1])
    assert bpe.decode([0xE4]) == "\ufffd"


# ----------------------------------------------------------------------------------------------- references


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_bpe_equals_raw_tiktoken(bpe, text):
    raw = tiktoken.Encoding("raw", pat_str=GPT4_SPLIT_PATTERN,
                            mergeable_ranks={b: i for i, b in enumerate(bpe.vocab)}, special_tokens={})
    assert bpe.encode(text) == raw.encode_ordinary(text)


def test_bpe_equals_raw_tiktoken_on_corpus(bpe):
    raw = tiktoken.Encoding("raw", pat_str=GPT4_SPLIT_PATTERN,
                            mergeable_ranks={b: i for i, b in enumerate(bpe.vocab)}, special_tokens={})
    texts = list(python_stdlib_texts(max_bytes=600_000))[-5:] + MULTILINGUAL
    assert [bpe.encode(t) for t in texts] == [raw.encode_ordinary(t) for t in texts]
    assert bpe.encode_batch(texts, num_threads=2) == raw.encode_ordinary_batch(texts, num_threads=2)


def test_bpe_equals_merges_applied_in_order(bpe):
    # tiktoken's lowest-rank-first rule gives the same ids as replaying the learnt merges in order
    merges = {(bpe.vocab.index(left), bpe.vocab.index(right)): 256 + i for i, (left, right) in enumerate(bpe.merges)}
    from minillm.tokenizer import merge_pair
    for text in MULTILINGUAL + list(python_stdlib_texts(max_bytes=20_000))[:1]:
        out = []
        for chunk in regex.findall(GPT4_SPLIT_PATTERN, text):
            ids = list(chunk.encode("utf-8"))
            for pair, new_id in merges.items():
                ids = merge_pair(ids, pair, new_id)
            out += ids
        assert bpe.encode(text) == out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(st.characters(blacklist_categories=("Cs",))), st.booleans(), st.booleans())
def test_sentencepiece_equals_sentencepiece(sp, text, bos, eos):
    ref = sp_reference(sp)
    ids = sp.encode(text, bos=bos, eos=eos)
    assert ids == ref.encode(text, add_bos=bos, add_eos=eos)
    assert sp.decode(ids) == ref.decode(ids)


def test_sentencepiece_equals_sentencepiece_on_corpus(sp):
    ref = sp_reference(sp)
    texts = list(python_stdlib_texts(max_bytes=600_000))[-5:] + MULTILINGUAL + TRICKY
    assert [sp.encode(t) for t in texts] == [ref.encode(t) for t in texts]
    assert sp.encode_batch(texts, bos=True, num_threads=2) == ref.encode(texts, add_bos=True)
    ids = ref.encode(texts[0])
    assert sp.decode(ids) == ref.decode(ids)
    assert sp.vocab_size == ref.get_piece_size() == 800


def test_sentencepiece_llama_layout(sp):
    pieces = sp.model["pieces"]
    assert [p[0] for p in pieces[:4]] == ["<unk>", "<s>", "</s>", "<|user|>"]
    assert [p[2] for p in pieces[:4]] == ["unknown", "control", "control", "control"]
    assert [p[0] for p in pieces[4:260]] == [f"<0x{b:02X}>" for b in range(256)]
    assert (sp.bos_id, sp.eos_id) == (1, 2)
    spec = sp.trainer_spec
    assert spec["model_type"] == "bpe" and spec["byte_fallback"] is True and spec["split_digits"] is True
    assert spec["allow_whitespace_only_pieces"] is True and spec["pad_id"] == -1
    assert sp.normalizer_spec["name"] == "identity" and sp.normalizer_spec["add_dummy_prefix"] is True
    assert sp.normalizer_spec["remove_extra_whitespaces"] is False
    assert sp.token_bytes(4 + 0x0A) == b"\n"
    assert sp.encode("7") == sp_reference(sp).encode("7") and len(sp.encode("12345")) >= 5  # split_digits


def test_read_sentencepiece_model_agrees_with_processor(sp):
    ref = sp_reference(sp)
    pieces = read_sentencepiece_model(sp.model_proto)["pieces"]
    assert [p[0] for p in pieces] == [ref.id_to_piece(i) for i in range(ref.get_piece_size())]
    assert [p[1] for p in pieces] == pytest.approx([ref.get_score(i) for i in range(ref.get_piece_size())])
    assert [i for i, p in enumerate(pieces) if p[2] == "byte"] == [i for i in range(len(pieces)) if ref.is_byte(i)]
    assert [i for i, p in enumerate(pieces) if p[2] == "control"] == [i for i in range(len(pieces)) if ref.is_control(i)]


def test_sentencepiece_from_a_file_trained_by_sentencepiece_itself(tmp_path, corpus):
    # a model written by spm's own trainer from a text file (the way Meta trained Llama's) loads unchanged
    (tmp_path / "corpus.txt").write_text("\n".join(line for t in corpus for line in t.split("\n") if line))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "m"),
                                   model_type="bpe", vocab_size=600, byte_fallback=True, minloglevel=2)
    tok = Tokenizer.load(tmp_path / "m.model")
    ref = spm.SentencePieceProcessor(model_file=str(tmp_path / "m.model"))
    for t in MULTILINGUAL:
        assert tok.encode(t, bos=True, eos=True) == ref.encode(t, add_bos=True, add_eos=True)
        assert tok.decode(ref.encode(t)) == ref.decode(ref.encode(t))


# ----------------------------------------------------------------------------------------------- special tokens


def test_special_tokens_are_text_unless_allowed(bpe):
    text = "<s>hi</s><|user|>"
    plain = bpe.encode(text)
    assert not set(plain) & set(bpe.special_tokens.values())
    assert bpe.decode(plain) == text
    assert bpe.encode(text, allowed_special={"<s>"}) == [997] + bpe.encode("hi</s><|user|>")
    assert bpe.encode(text, allowed_special="all") == [997] + bpe.encode("hi") + [998, 999]
    assert bpe.decode(bpe.encode(text, allowed_special="all")) == text
    assert bpe.encode("hi", bos=True, eos=True) == [997] + bpe.encode("hi") + [998]
    assert bpe.encode_batch(["hi", text], bos=True, allowed_special="all") == \
        [bpe.encode("hi", bos=True), bpe.encode(text, bos=True, allowed_special="all")]


def test_sentencepiece_special_tokens(sp):
    text = "<s>hi</s><|user|>"
    plain = sp.encode(text)
    assert plain == sp_reference(sp).encode(text)
    assert not set(plain) & {1, 2, 3}
    assert sp.special_tokens == {"<unk>": 0, "<s>": 1, "</s>": 2, "<|user|>": 3}
    ids = sp.encode("a<|user|>b", allowed_special={"<|user|>"})
    assert ids == sp_reference(sp).encode("a") + [3] + sp_reference(sp).encode("b")
    assert sp.encode_batch(["a<|user|>b"], allowed_special={"<|user|>"}) == [ids]


@pytest.mark.parametrize("kind", ["bpe", "sp"])
def test_unknown_special_token(request, kind):
    tok = request.getfixturevalue(kind)
    with pytest.raises(ValueError, match=r"unknown special token '<\|assistant\|>': this tokenizer's special tokens are"):
        tok.encode("x", allowed_special={"<|assistant|>"})


def test_tokenizer_without_bos(corpus):
    tok = Tokenizer.train(corpus[:3], vocab_size=300, special_tokens=())
    assert tok.bos_id is None and tok.eos_id is None
    with pytest.raises(ValueError, match="bos=True, but this tokenizer has no BOS token"):
        tok.encode("x", bos=True)
    with pytest.raises(ValueError, match="eos=True, but this tokenizer has no EOS token"):
        tok.encode("x", eos=True)
    custom = Tokenizer.train(corpus[:3], vocab_size=300, special_tokens=("<|bos|>", "<|eos|>"), bos="<|bos|>", eos="<|eos|>")
    assert custom.encode("x", bos=True, eos=True) == [298, *custom.encode("x"), 299]


# ----------------------------------------------------------------------------------------------- files, pickling


def test_bpe_save_load_round_trip(bpe, tmp_path):
    path = bpe.save(tmp_path / "tok.json")
    d = json.loads(path.read_text())
    assert (d["format"], d["version"], d["bos"], d["eos"]) == ("minillm-bpe", 1, "<s>", "</s>")
    assert d["special_tokens"] == {"<s>": 997, "</s>": 998, "<|user|>": 999}
    assert bytes.fromhex(d["merges"][0][0]) + bytes.fromhex(d["merges"][0][1]) == bpe.vocab[256]
    loaded = Tokenizer.load(path)
    assert isinstance(loaded, BPETokenizer)
    assert loaded.fingerprint == bpe.fingerprint and loaded.vocab == bpe.vocab
    assert loaded.encode(MULTILINGUAL[0], bos=True) == bpe.encode(MULTILINGUAL[0], bos=True)
    assert bpe.save(tmp_path) == tmp_path / "tokenizer.bpe.json"  # a directory gets the default name
    assert Tokenizer.load(tmp_path).fingerprint == bpe.fingerprint
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_sentencepiece_save_load_round_trip(sp, tmp_path):
    path = sp.save(tmp_path / "whatever.bin")
    assert path.read_bytes() == sp.model_proto
    loaded = Tokenizer.load(path)
    assert isinstance(loaded, SentencePieceTokenizer)
    assert loaded.fingerprint == sp.fingerprint
    assert sp.save(tmp_path) == tmp_path / "tokenizer.model"
    assert Tokenizer.load(tmp_path).encode(MULTILINGUAL[1]) == sp.encode(MULTILINGUAL[1])


@pytest.mark.parametrize("kind", ["bpe", "sp"])
def test_pickle(request, kind):
    tok = request.getfixturevalue(kind)
    again = pickle.loads(pickle.dumps(tok))
    assert type(again) is type(tok) and again.fingerprint == tok.fingerprint
    assert again.encode(MULTILINGUAL[4], bos=True) == tok.encode(MULTILINGUAL[4], bos=True)


def test_tokenizers_work_in_worker_processes(bpe, sp):
    # data preparation sends the tokenizer to worker processes; spawn pickles it (fork would not test that)
    texts = MULTILINGUAL
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        assert list(pool.map(bpe.encode, texts)) == [bpe.encode(t) for t in texts]
        assert list(pool.map(sp.encode, texts)) == [sp.encode(t) for t in texts]


def test_fingerprint_is_stable_and_discriminating(bpe):
    tiny = BPETokenizer([(b"a", b"b"), (b"ab", b"c")])
    # a fixed value: changing how fingerprints are computed would orphan every data shard already written
    assert tiny.fingerprint == "5cbdcb154437af412792c7ba348fd68b4d130bb1736595d8084dcce9a1bb594e"
    assert BPETokenizer([(b"a", b"b"), (b"ab", b"c")]).fingerprint == tiny.fingerprint
    others = [BPETokenizer([(b"a", b"b")]), BPETokenizer([(b"a", b"b"), (b"ab", b"d")]),
              BPETokenizer([(b"a", b"b"), (b"ab", b"c")], special_tokens=("<s>", "</s>", "<pad>")),
              BPETokenizer([(b"a", b"b"), (b"ab", b"c")], special_tokens=("</s>", "<s>")),
              BPETokenizer([(b"a", b"b"), (b"ab", b"c")], pattern=r"\S+|\s+")]
    assert len({tiny.fingerprint} | {o.fingerprint for o in others}) == len(others) + 1
    assert regex.fullmatch("[0-9a-f]{64}", bpe.fingerprint)


def test_sentencepiece_fingerprint_ignores_training_run_details(corpus, sp):
    again = Tokenizer.train_sentencepiece(corpus, vocab_size=800, special_tokens=("<|user|>",), num_threads=2)
    assert again.model_proto != sp.model_proto  # num_threads is recorded in the file...
    assert again.fingerprint == sp.fingerprint  # ...but does not change a single id
    other = Tokenizer.train_sentencepiece(corpus, vocab_size=801, special_tokens=("<|user|>",), num_threads=1)
    assert other.fingerprint != sp.fingerprint
    assert sp.fingerprint != Tokenizer.train(corpus, 800).fingerprint


# ----------------------------------------------------------------------------------------------- bad input


def test_vocab_size_too_small(corpus):
    with pytest.raises(ValueError, match=r"vocab_size=257 is too small: .* 256 byte tokens and the 2 special tokens, so at least 258"):
        Tokenizer.train(corpus, vocab_size=257)
    with pytest.raises(ValueError, match=r"vocab_size=100 is too small: byte-level BPE starts from the 256 byte tokens"):
        train_bpe(corpus, 100)
    with pytest.raises(ValueError, match=r"vocab_size=200 is too small: <unk>, <s>, </s>, 0 special tokens and the byte tokens already take 259 ids"):
        Tokenizer.train_sentencepiece(corpus, vocab_size=200)
    assert Tokenizer.train(corpus, vocab_size=258).vocab_size == 258  # exactly the minimum: no merges at all


@pytest.mark.parametrize("texts", [[], [""], ["", ""]])
def test_training_on_empty_text(texts):
    with pytest.raises(ValueError, match="no text to train on: every text was empty"):
        Tokenizer.train(texts, vocab_size=300)
    with pytest.raises(ValueError, match="no text to train on: every text was empty"):
        train_bpe_naive(texts, 300)
    with pytest.raises(ValueError, match="no text to train on: every text was empty"):
        Tokenizer.train_sentencepiece(texts, vocab_size=300)


def test_training_text_too_small_for_vocab():
    with pytest.raises(ValueError, match=r"ran out of pairs to merge at 259 tokens, short of vocab_size=998"):
        Tokenizer.train(["abcd"], vocab_size=1000)
    with pytest.raises(ValueError, match=r"SentencePiece could not train vocab_size=5000: Vocabulary size too high"):
        Tokenizer.train_sentencepiece(["hello world"] * 10, vocab_size=5000)


def test_bad_special_tokens(corpus):
    with pytest.raises(ValueError, match="special tokens must be distinct; repeated: <s>"):
        Tokenizer.train(corpus, 300, special_tokens=("<s>", "<s>"))
    with pytest.raises(ValueError, match="special token '' must be a non-empty string"):
        Tokenizer.train(corpus, 300, special_tokens=("<s>", ""))
    with pytest.raises(ValueError, match=r"bos='<bos>' is not one of the special tokens \('<s>', '</s>'\)"):
        Tokenizer.train(corpus, 300, bos="<bos>")
    with pytest.raises(ValueError, match=r"special_tokens='<s>' must be a sequence of strings"):
        Tokenizer.train(corpus, 300, special_tokens="<s>")


def test_decode_out_of_range(bpe, sp):
    with pytest.raises(ValueError, match=r"token id 1000 is out of range: this tokenizer's ids are 0 to 999"):
        bpe.decode([1, 1000])
    with pytest.raises(ValueError, match=r"token id -1 is out of range: this tokenizer's ids are 0 to 799"):
        sp.decode([-1])
    with pytest.raises(ValueError, match="out of range"):
        bpe.token_bytes(5000)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no tokenizer at '.*nope.model': the path does not exist"):
        Tokenizer.load(tmp_path / "nope.model")
    with pytest.raises(FileNotFoundError, match=r"no tokenizer in directory '.*': expected a minillm BPE file .* a SentencePiece model"):
        Tokenizer.load(tmp_path)


def test_corrupt_bpe_files(bpe, tmp_path):
    good = bpe.save(tmp_path / "good.json").read_text()
    cases = {
        "truncated": (good[: len(good) // 2], "corrupt minillm BPE file"),
        "version": (good.replace('"version": 1', '"version": 7'), "version 7; this minillm reads version 1"),
        "hex": (good.replace('["20", "20"]', '["zz", "20"]', 1), "corrupt minillm BPE file: non-hexadecimal"),
        "order": (good.replace('["20", "20"]', '["2020", "20"]', 1), r"merge 0 \(b'  ' \+ b' '\) joins a token that no earlier merge made"),
        "ids": (good.replace('"<s>": 997', '"<s>": 5'), f"special token ids .* do not follow the {len(bpe.merges)} merges"),
        "shape": (good.replace('["20", "20"]', '["20"]', 1), "merge 0 is not a pair of hex strings"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            Tokenizer.load(path)
        with pytest.raises(ValueError, match=rf"'{regex.escape(str(path))}'"):
            Tokenizer.load(path)


def test_corrupt_and_foreign_files(sp, tmp_path):
    (tmp_path / "cut.model").write_bytes(sp.model_proto[:1000])
    with pytest.raises(ValueError, match=r"'.*cut.model' is not a valid SentencePiece model"):
        Tokenizer.load(tmp_path / "cut.model")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("just some text\n")
    (tmp_path / "hf.json").write_text('{"version": "1.0", "model": {}}')
    for name in ("empty", "notes.txt", "hf.json"):
        with pytest.raises(ValueError, match=rf"'.*{name}' is not a tokenizer file minillm can read: expected a minillm BPE file"):
            Tokenizer.load(tmp_path / name)
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        SentencePieceTokenizer(b"garbage")
    with pytest.raises(ValueError, match="not a valid SentencePiece model: it has no pieces"):
        SentencePieceTokenizer(b"")


def test_register_tokenizer_format(bpe, tmp_path):
    saved = list(TOKENIZER_FORMATS)
    try:
        register_tokenizer_format(TokenizerFormat("fake", "a fake directory", lambda p: (p / "fake.txt").is_file(),
                                                  lambda p: bpe))
        (tmp_path / "fake.txt").write_text("x")
        sp_dir = tmp_path / "sub"
        sp_dir.mkdir()
        assert Tokenizer.load(tmp_path) is bpe
        assert TOKENIZER_FORMATS[0].name == "fake"
        with pytest.raises(FileNotFoundError, match="expected a fake directory; a minillm BPE file"):
            Tokenizer.load(sp_dir)
    finally:
        TOKENIZER_FORMATS[:] = saved
    assert [f.name for f in TOKENIZER_FORMATS] == ["minillm-bpe", "sentencepiece", "hf-tokenizer-json"]


def test_encode_rejects_non_strings(bpe, sp):
    for tok in (bpe, sp):
        with pytest.raises(TypeError, match="text must be a str, not bytes"):
            tok.encode(b"bytes")


# ----------------------------------------------------------------------------------------------- misc


def test_decode_accepts_tensors(bpe):
    import torch

    ids = bpe.encode("tensor input")
    assert bpe.decode(torch.tensor(ids)) == "tensor input"


def test_tokens_html_shows_the_text_token_by_token(bpe, sp):
    import html

    text = "a <b> & 世界 👋\nnext"
    for tok, shown in ((bpe, text), (sp, " " + text)):  # SentencePiece's dummy prefix is a visible space
        out = tokens_html(tok, text)
        ids = tok.encode(text)
        assert f"→ {len(ids)} tokens" in out
        spans = regex.findall(r'<span style="[^"]*" title="([0-9 ]+)">(.*?)</span>', out, flags=regex.S)
        assert [int(i) for ids_, _ in spans for i in ids_.split()] == ids  # every token, in order
        assert html.unescape("".join(body for _, body in spans)).replace("↵\n", "\n") == shown
        assert "<b>" not in out  # the text is escaped


def test_tinyllama_tokenizer_path_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILLM_TINYLLAMA_TOKENIZER", str(tmp_path / "x.model"))
    assert tinyllama_tokenizer_path() == tmp_path / "x.model"
    monkeypatch.delenv("MINILLM_TINYLLAMA_TOKENIZER")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert tinyllama_tokenizer_path() is None
    snap = tmp_path / "models--TinyLlama--TinyLlama-1.1B-Chat-v1.0" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "tokenizer.model").write_bytes(b"\n")
    assert tinyllama_tokenizer_path() == snap / "tokenizer.model"


@pytest.mark.integration
def test_real_tinyllama_tokenizer():
    """Needs TinyLlama's tokenizer.model on this machine (MINILLM_TINYLLAMA_TOKENIZER or the Hugging Face cache).
    Run with `pytest -m integration`; the ids are the published Llama 2 tokenizations."""
    path = tinyllama_tokenizer_path()
    assert path is not None and path.is_file(), "no TinyLlama tokenizer.model found: set MINILLM_TINYLLAMA_TOKENIZER"
    tok = Tokenizer.load(path)
    ref = spm.SentencePieceProcessor(model_file=str(path))
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (32000, 1, 2)
    assert tok.encode("Hello world", bos=True) == [1, 15043, 3186]
    assert tok.encode(" Hello", bos=True) == [1, 29871, 15043]
    assert tok.encode("你好", bos=True) == [1, 29871, 30919, 31076]
    assert tok.trainer_spec["model_type"] == "bpe" and tok.trainer_spec["byte_fallback"] is True
    for t in MULTILINGUAL + TRICKY:
        assert tok.encode(t) == ref.encode(t)
        assert tok.decode(ref.encode(t)) == ref.decode(ref.encode(t))
