"""Exports checked by libraries no one here wrote: transformers and tokenizers read the Hugging Face directory (same
ids, logits, greedy text), gguf's own reader reads the GGUF file (metadata, tensors, the RoPE permutation, Q8_0);
plus the bad input `minillm export` meets. llama.cpp itself is in tests/integration/test_llama_cpp.py."""
import json
import os

import numpy as np
import pytest
import regex
import tiktoken
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minillm.cli import main
from minillm.config import LlamaConfig
from minillm.export import (
    GGUF_PRE_TOKENIZERS,
    export,
    export_summary,
    gguf_name,
    gguf_state_dict,
    load_gguf,
    save_gguf,
)
from minillm.generate import generate
from minillm.hf import save_hf
from minillm.model import Llama
from minillm.rope import half_to_interleaved, interleaved_to_half
from minillm.tokenizer import GPT4_SPLIT_PATTERN, BPETokenizer, Tokenizer
from minillm.tokenizer_files import bpe_merges, bytes_to_unicode, hf_split_pattern, hf_tokenizer, save_hf_tokenizer

import gguf  # noqa: E402
import transformers  # noqa: E402
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import GGUFReader  # noqa: E402
from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers.utils.logging.set_verbosity_error()

MULTILINGUAL = ["Größenwahn, naïve café, déjà vu — ça va?", "日本語のテキストと漢字。中文文本。", "Русский текст и ελληνικά.",
                "emoji 👩‍👩‍👧 🇫🇷 👋🏽", "    def f(x):\n        return x ** 2  # indent\n", "port 65535, 1234567 items"]
TRICKY = ["", " ", "  ", "\n", "\r\n", "\t\t", "\x00", " leading", "  two leading", "trailing  ", "x\n  ", "\n\n  \n",
          "<s>", "</s>", "<unk>", "<|user|> hi", "a<s>b</s>c", "\ufeffBOM", "e\u0301", "\U0010ffff", "12345678901",
          "don't DON'T it's", "\u2028\u0085\xa0", "ſ'S"]
ANY_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=120)
# texts made mostly of the characters the split pattern treats specially
PATTERN_TEXT = st.text(alphabet=st.sampled_from(list(" \t\n\r\x0b\x0c\x85\xa0\u2028\u3000'sdmtlvreSDTLVRE0123456789abcxyz"
                                                     ".,;:!?-_()#\"/\\éß日本ſ\u1680\u200b\U0001f600")), max_size=60)


@pytest.fixture(scope="module")
def hf_dirs(bpe, sp, tmp_path_factory):
    """Each tokenizer saved as Hugging Face files and loaded back by transformers."""
    out = {}
    for name, tok in (("bpe", bpe), ("sp", sp)):
        d = tmp_path_factory.mktemp(f"hf-{name}")
        save_hf_tokenizer(tok, d, model_max_length=1_000_000)
        out[name] = (tok, d, AutoTokenizer.from_pretrained(d))
    return out


def small_model(vocab_size=1024, tie=False, ffn_dim=160, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=ffn_dim, max_seq_len=64,
                      init_std=0.1, tie_embeddings=tie, rope_theta=5000.0)
    return Llama(cfg).eval()


def field(reader, key):
    return reader.fields[key].contents()


# ------------------------------------------------------------------------------------ the split pattern


def test_hf_split_pattern_rewrites_only_what_oniguruma_reads_differently():
    assert hf_split_pattern(r"\p{N}{1,3}+|\s++$") == r"\p{N}{1,3}|\s++\z"
    assert hf_split_pattern(r"^a$") == r"\Aa\z"
    assert hf_split_pattern(r"x{2}+") == "x{2}"
    for unchanged in (r"[$^]", r"\$\^", r"[^\s\p{L}]+", r"a{1,3}", r"a++", r"(?i:'s)", r"[\]$]"):
        assert hf_split_pattern(unchanged) == unchanged


def _tiktoken_pieces(pattern, text, candidates):
    """The pieces tiktoken's split gives: an encoding whose vocabulary holds every candidate piece whole returns each
    piece as one token (a piece it does not hold comes back in bytes, and the comparison fails)."""
    ranks = {bytes([b]): b for b in range(256)}
    for piece in sorted({c.encode() for c in candidates}):
        ranks.setdefault(piece, len(ranks))
    enc = tiktoken.Encoding("probe", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    return [enc.decode_single_token_bytes(i).decode("utf-8", "replace") for i in enc.encode_ordinary(text)]


@settings(max_examples=300, deadline=None)
@given(st.one_of(ANY_TEXT, PATTERN_TEXT))
def test_tokenizers_split_equals_tiktoken_split(text):
    from tokenizers import Regex, pre_tokenizers

    split = pre_tokenizers.Split(Regex(hf_split_pattern(GPT4_SPLIT_PATTERN)), behavior="isolated")
    theirs = [p for p, _ in split.pre_tokenize_str(text)]
    assert theirs == _tiktoken_pieces(GPT4_SPLIT_PATTERN, text, theirs + regex.findall(GPT4_SPLIT_PATTERN, text))


def test_the_unconverted_pattern_would_split_numbers_differently():
    from tokenizers import Regex, pre_tokenizers

    raw = pre_tokenizers.Split(Regex(GPT4_SPLIT_PATTERN), behavior="isolated")
    assert [p for p, _ in raw.pre_tokenize_str("1234567")] == ["1234567"]  # why hf_split_pattern exists


# ------------------------------------------------------------------------------------ merges


def test_bpe_merges_hold_every_split_in_rank_order():
    tok = BPETokenizer([(b"b", b"c"), (b"a", b"b"), (b"ab", b"c")], special_tokens=())
    merges = bpe_merges(tok.vocab)
    assert merges == [(b"b", b"c"), (b"a", b"b"), (b"a", b"bc"), (b"ab", b"c")]
    hf = hf_tokenizer(tok)
    for text in ("xabc", "abc", "abcabc", "bcab"):
        assert hf.encode(text).ids == tok.encode(text)


def test_bytes_to_unicode_is_gpt2s_map():
    m = bytes_to_unicode()
    assert len(set(m.values())) == 256 and m[ord("a")] == "a" and m[32] == "Ġ" and m[10] == "Ċ" and m[9] == "ĉ"


# ------------------------------------------------------------------------------------ AutoTokenizer parity


@pytest.mark.parametrize("kind", ["bpe", "sp"])
@pytest.mark.parametrize("text", TRICKY + MULTILINGUAL)
def test_autotokenizer_ids_on_tricky_text(hf_dirs, kind, text):
    tok, _, hf = hf_dirs[kind]
    assert hf(text)["input_ids"] == tok.encode(text, bos=True)
    assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert hf.decode(tok.encode(text)) == tok.decode(tok.encode(text))
    assert hf.decode(tok.encode(text, bos=True), skip_special_tokens=True) == tok.decode(tok.encode(text))


@pytest.mark.parametrize("kind", ["bpe", "sp"])
def test_autotokenizer_ids_on_any_unicode(hf_dirs, kind):
    tok, _, hf = hf_dirs[kind]

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.one_of(ANY_TEXT, PATTERN_TEXT))
    def check(text):
        assert hf(text)["input_ids"] == tok.encode(text, bos=True)
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
        assert hf.decode(tok.encode(text)) == tok.decode(tok.encode(text))

    check()


@pytest.mark.parametrize("kind", ["bpe", "sp"])
def test_tokenizer_files_and_roles(hf_dirs, kind):
    tok, d, hf = hf_dirs[kind]
    names = sorted(p.name for p in d.iterdir())
    expected = ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert names == sorted(expected + (["tokenizer.model"] if kind == "sp" else []))
    assert (hf.bos_token_id, hf.eos_token_id) == (tok.bos_id, tok.eos_id)
    config = json.loads((d / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is True and config["add_eos_token"] is False and config["split_special_tokens"] is True
    assert config["model_max_length"] == 1_000_000
    specials = json.loads((d / "special_tokens_map.json").read_text())
    assert specials["bos_token"] == "<s>" and specials["eos_token"] == "</s>"
    # a special token written in the text is text; through the tokenizers API directly it is the special id
    assert tok.special_tokens["<|user|>"] not in hf("<|user|>")["input_ids"]


def test_bpe_without_bos_adds_nothing(corpus, tmp_path):
    tok = Tokenizer.train(corpus[:20], vocab_size=300, special_tokens=("<|endoftext|>",), bos=None, eos="<|endoftext|>")
    save_hf_tokenizer(tok, tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    for text in ("hello world", ""):
        assert hf(text)["input_ids"] == tok.encode(text)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["add_bos_token"] is False
    assert hf.eos_token_id == tok.eos_id


def test_tokenizer_json_reads_back_identically(bpe, sp, hf_dirs, tmp_path):
    back = Tokenizer.load(hf_dirs["bpe"][1])
    assert isinstance(back, BPETokenizer) and back.fingerprint == bpe.fingerprint
    assert Tokenizer.load(hf_dirs["sp"][1]).fingerprint == sp.fingerprint  # read from tokenizer.model
    custom = BPETokenizer(bpe.merges, ("<s>", "</s>"), pattern=r"'s|'t| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
    save_hf_tokenizer(custom, tmp_path / "custom")
    assert Tokenizer.load(tmp_path / "custom").fingerprint == custom.fingerprint


def test_foreign_tokenizer_json_is_refused_clearly(hf_dirs, tmp_path):
    (tmp_path / "sp-json").mkdir()
    (tmp_path / "sp-json" / "tokenizer.json").write_bytes((hf_dirs["sp"][1] / "tokenizer.json").read_bytes())
    with pytest.raises(ValueError, match="not a byte-level BPE tokenizer.json minillm can read"):
        Tokenizer.load(tmp_path / "sp-json")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="minillm can read"):
        Tokenizer.load(tmp_path / "broken")


def test_unsupported_sentencepiece_is_refused_before_writing(corpus, tmp_path):
    uni = Tokenizer.train_sentencepiece(corpus[:30], vocab_size=600, num_threads=1, model_type="unigram")
    with pytest.raises(ValueError, match="model_type='unigram'"):
        hf_tokenizer(uni)
    with pytest.raises(ValueError, match="cannot be written as tokenizer.json"):
        save_hf(small_model(), tmp_path / "out", tokenizer=uni)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ save_hf with the tokenizer


@pytest.mark.parametrize("kind", ["bpe", "sp"])
def test_save_hf_with_tokenizer_runs_in_transformers(bpe, sp, kind, tmp_path):
    tok = {"bpe": bpe, "sp": sp}[kind]
    model = small_model(tie=kind == "sp")
    save_hf(model, tmp_path / "m", tokenizer=tok)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    generation = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (tok.bos_id, tok.eos_id) == tuple(generation.values())
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    hf_model = LlamaForCausalLM.from_pretrained(tmp_path / "m").eval()
    text = "def main():\n    print('hello')"
    ids = hf_tok(text, return_tensors="pt").input_ids
    assert ids[0].tolist() == tok.encode(text, bos=True)
    with torch.no_grad():
        assert (hf_model(ids).logits - model(ids)).abs().max() <= 1e-5
        theirs = hf_model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert theirs[0].tolist() == generate(model, ids[0].tolist(), 16, temperature=0)


def test_save_hf_tokenizer_mismatch_is_refused(bpe, tmp_path):
    with pytest.raises(ValueError, match="bos_token_id=1 disagrees with the tokenizer"):
        save_hf(small_model(), tmp_path / "a", tokenizer=bpe, bos_token_id=1)
    with pytest.raises(ValueError, match="tokenizer has 1000 ids but the model's vocab_size is 512"):
        save_hf(small_model(vocab_size=512), tmp_path / "b", tokenizer=bpe)
    assert sorted(tmp_path.iterdir()) == []
    save_hf(small_model(), tmp_path / "c", tokenizer=bpe, bos_token_id=bpe.bos_id)  # agreeing ids are fine


# ------------------------------------------------------------------------------------ GGUF: metadata and tokenizer


@pytest.mark.parametrize("kind", ["bpe", "sp"])
def test_gguf_metadata(bpe, sp, kind, tmp_path):
    tok = {"bpe": bpe, "sp": sp}[kind]
    model = small_model()
    cfg = model.cfg
    path = save_gguf(model, tmp_path / "m.gguf", tok, name="tiny")
    r = GGUFReader(path)
    expected = {"general.architecture": "llama", "general.name": "tiny", "llama.context_length": 64,
                "llama.embedding_length": 64, "llama.block_count": 2, "llama.feed_forward_length": 160,
                "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2, "llama.rope.freq_base": 5000.0,
                "llama.rope.dimension_count": 16, "llama.vocab_size": 1024, "general.file_type": 0,
                "tokenizer.ggml.bos_token_id": tok.bos_id, "tokenizer.ggml.eos_token_id": tok.eos_id,
                "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": False}
    assert {k: field(r, k) for k in expected} == expected
    assert field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg.norm_eps)
    tokens, types = field(r, "tokenizer.ggml.tokens"), field(r, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == cfg.vocab_size  # padded to one token per embedding row
    assert tokens[tok.vocab_size:] == [f"[PAD{i}]" for i in range(tok.vocab_size, cfg.vocab_size)]
    assert set(types[tok.vocab_size:]) == {gguf.TokenType.UNUSED}
    assert types[tok.bos_id] == types[tok.eos_id] == gguf.TokenType.CONTROL
    if kind == "bpe":
        chars = bytes_to_unicode()
        spell = lambda t: "".join(chars[b] for b in t)
        assert field(r, "tokenizer.ggml.model") == "gpt2" and field(r, "tokenizer.ggml.pre") == "llama-bpe"
        assert tokens[:len(bpe.vocab)] == [spell(t) for t in bpe.vocab]
        assert tokens[bpe.special_tokens["<|user|>"]] == "<|user|>"
        assert field(r, "tokenizer.ggml.merges") == [f"{spell(a)} {spell(b)}" for a, b in bpe_merges(bpe.vocab)]
    else:
        pieces = sp.model["pieces"]
        assert field(r, "tokenizer.ggml.model") == "llama" and field(r, "tokenizer.ggml.add_space_prefix") is True
        assert tokens[:sp.vocab_size] == [p for p, _, _ in pieces]
        assert field(r, "tokenizer.ggml.scores")[:sp.vocab_size] == pytest.approx([s for _, s, _ in pieces])
        kinds = [k for _, _, k in pieces]
        assert types[kinds.index("byte")] == gguf.TokenType.BYTE and types[0] == gguf.TokenType.UNKNOWN
        assert types[sp.special_tokens["<|user|>"]] == gguf.TokenType.CONTROL
        assert field(r, "tokenizer.ggml.unknown_token_id") == 0


def test_gguf_tokenizer_must_fit_and_have_a_known_pattern(bpe, tmp_path):
    with pytest.raises(ValueError, match="tokenizer has 1000 ids but the model's vocab_size is 512"):
        save_gguf(small_model(vocab_size=512), tmp_path / "a.gguf", bpe)
    custom = BPETokenizer(bpe.merges[:100], ("<s>", "</s>"), pattern=r" ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+")
    with pytest.raises(ValueError, match="llama.cpp has no pre-tokenizer for this tokenizer's split pattern"):
        save_gguf(small_model(), tmp_path / "b.gguf", custom)
    assert sorted(tmp_path.iterdir()) == []
    save_gguf(small_model(), tmp_path / "c.gguf", custom, pre_tokenizer="gpt-2")
    assert field(GGUFReader(tmp_path / "c.gguf"), "tokenizer.ggml.pre") == "gpt-2"
    assert GGUF_PRE_TOKENIZERS[GPT4_SPLIT_PATTERN] == "llama-bpe"


# ------------------------------------------------------------------------------------ GGUF: tensors


def test_gguf_names_follow_ggufs_table():
    assert gguf_name("tok_embeddings.weight") == "token_embd.weight"
    assert gguf_name("layers.7.attention.wo.weight") == "blk.7.attn_output.weight"
    assert gguf_name("layers.0.feed_forward.w1.weight") == "blk.0.ffn_gate.weight"
    assert gguf_name("layers.0.feed_forward.w3.weight") == "blk.0.ffn_up.weight"
    assert gguf_name("layers.0.feed_forward.w2.weight") == "blk.0.ffn_down.weight"
    assert gguf_name("norm.weight") == "output_norm.weight" and gguf_name("output.weight") == "output.weight"
    with pytest.raises(ValueError, match="not a minillm Llama parameter name"):
        gguf_name("layers.0.attention.bias")


@pytest.mark.parametrize("dtype,quant,matrix_type", [("float32", None, Q.F32), ("float16", None, Q.F16),
                                                     ("bfloat16", None, Q.BF16), ("float32", "q8_0", Q.Q8_0)])
def test_gguf_tensor_shapes_and_types(bpe, tmp_path, dtype, quant, matrix_type):
    model = small_model(ffn_dim=176)  # rows of 176 in ffn_down: not whole Q8_0 blocks of 32
    save_gguf(model, tmp_path / "m.gguf", bpe, dtype=dtype, quant=quant)
    r = GGUFReader(tmp_path / "m.gguf")
    tensors = {t.name: t for t in r.tensors}
    params = dict(model.named_parameters())
    assert set(tensors) == {gguf_name(n) for n in params}
    for name, p in params.items():
        t = tensors[gguf_name(name)]
        assert t.shape.tolist() == list(reversed(p.shape))  # GGUF lists the innermost dimension first
        if p.ndim == 1:
            assert t.tensor_type == Q.F32
        elif quant and name.endswith("w2.weight"):
            assert t.tensor_type == Q.F32  # the fallback for rows that are not whole blocks: the plain dtype
        else:
            assert t.tensor_type == matrix_type
    assert field(r, "general.file_type") == {Q.F32: 0, Q.F16: 1, Q.BF16: 32, Q.Q8_0: 7}[matrix_type]


def test_gguf_permutation_inverts_to_our_weights(bpe, tmp_path):
    model = small_model()
    cfg = model.cfg
    save_gguf(model, tmp_path / "m.gguf", bpe)
    tensors = {t.name: torch.from_numpy(np.array(t.data)) for t in GGUFReader(tmp_path / "m.gguf").tensors}
    for i, layer in enumerate(model.layers):
        wq, wk = layer.attention.wq.weight.detach(), layer.attention.wk.weight.detach()
        q, k = tensors[f"blk.{i}.attn_q.weight"], tensors[f"blk.{i}.attn_k.weight"]
        assert torch.equal(q, half_to_interleaved(wq, cfg.n_heads)) and not torch.equal(q, wq)
        assert torch.equal(interleaved_to_half(q, cfg.n_heads), wq)
        assert torch.equal(interleaved_to_half(k, cfg.n_kv_heads), wk)
        assert torch.equal(tensors[f"blk.{i}.attn_v.weight"], layer.attention.wv.weight.detach())  # v is not rotated


@pytest.mark.parametrize("tie", [False, True])
def test_load_gguf_float32_is_exact(bpe, tmp_path, tie):
    model = small_model(tie=tie)
    save_gguf(model, tmp_path / "m.gguf", bpe)
    names = [t.name for t in GGUFReader(tmp_path / "m.gguf").tensors]
    assert ("output.weight" in names) is not tie  # a tied head is left out; llama.cpp reuses token_embd
    back = load_gguf(tmp_path / "m.gguf")
    assert back.cfg.tie_embeddings is tie and (back.output.weight is back.tok_embeddings.weight) is tie
    for name, p in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], p), name
    tokens = torch.randint(0, 1024, (2, 33))
    with torch.no_grad():
        assert torch.equal(back(tokens), model(tokens))


def test_q8_0_and_half_formats_round_as_expected(bpe, tmp_path):
    model = small_model()
    sd = model.state_dict()
    tokens = torch.randint(0, 1024, (1, 40))
    with torch.no_grad():
        ours = model(tokens)
    for dtype, torch_dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        back = load_gguf(save_gguf(model, tmp_path / f"{dtype}.gguf", bpe, dtype=dtype))
        for name, p in sd.items():
            assert torch.equal(back.state_dict()[name], p if p.ndim == 1 else p.to(torch_dtype).float()), name
    q8 = save_gguf(model, tmp_path / "q8.gguf", bpe, quant="q8_0")
    back = load_gguf(q8)
    for name, p in sd.items():
        w = p.numpy()
        if p.ndim == 1:
            assert np.array_equal(back.state_dict()[name].numpy(), w)
            continue
        got = back.state_dict()[name].numpy()
        scale = np.abs(w.reshape(-1, 32)).max(axis=1) / 127
        assert np.all(np.abs(got - w).reshape(-1, 32) <= 0.6 * scale[:, None] + 1e-12), name
        assert 0 < np.abs(got - w).max()
    with torch.no_grad():
        diff = (back(tokens) - ours).abs().max()
    assert 0 < diff < 0.05 * ours.abs().max()
    sizes = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    assert sizes["q8.gguf"] < 0.7 * sizes["float16.gguf"]


def test_gguf_state_dict_is_float32_and_leaves_the_tied_head_out():
    model = small_model(tie=True).to(torch.bfloat16)
    sd = gguf_state_dict(model)
    assert "output.weight" not in sd and all(t.dtype == torch.float32 for t in sd.values())


# ------------------------------------------------------------------------------------ GGUF: files on disk


def test_save_gguf_is_atomic_and_refuses_to_overwrite(bpe, tmp_path, monkeypatch):
    model = small_model()
    path = save_gguf(model, tmp_path / "m.gguf", bpe)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists; pass --force"):
        save_gguf(model, path, bpe)
    with pytest.raises(FileExistsError, match="is a directory"):
        save_gguf(model, tmp_path, bpe)

    def boom(self, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_gguf(small_model(seed=1), path, bpe, overwrite=True)
    assert path.read_bytes() == before  # the old file is untouched
    with pytest.raises(RuntimeError, match="disk full"):
        save_gguf(model, tmp_path / "new.gguf", bpe)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]  # no half file, no temporary left behind
    monkeypatch.undo()
    save_gguf(small_model(seed=1), path, bpe, overwrite=True)
    assert path.read_bytes() != before


def test_load_gguf_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        load_gguf(tmp_path / "missing.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_gguf(tmp_path / "junk.gguf")


# ------------------------------------------------------------------------------------ export from a checkpoint


@pytest.fixture(scope="module")
def run_dir(bpe, tmp_path_factory):
    """A training run folder as `minillm train` leaves it, holding a checkpoint with its tokenizer."""
    from minillm.checkpoint import save_checkpoint
    from minillm.config import TrainConfig

    run = tmp_path_factory.mktemp("run")
    model = small_model()
    model.cfg.name = "tiny"
    opt = torch.optim.AdamW(model.parameters())
    state = dict(tokenizer=dict(fingerprint=bpe.fingerprint, vocab_size=bpe.vocab_size))
    save_checkpoint(run, 7, model, opt, state, model.cfg, TrainConfig(out_dir=str(run)), bpe)
    return run, model


def test_export_hf_from_a_checkpoint(run_dir, bpe, tmp_path):
    run, model = run_dir
    out = export(run, tmp_path / "hf")
    hf_tok, hf_model = AutoTokenizer.from_pretrained(out), LlamaForCausalLM.from_pretrained(out).eval()
    ids = hf_tok("x = 1", return_tensors="pt").input_ids
    assert ids[0].tolist() == bpe.encode("x = 1", bos=True)
    with torch.no_grad():
        assert (hf_model(ids).logits - model(ids)).abs().max() <= 1e-5
    half = export(run, tmp_path / "hf16", dtype="bfloat16")
    from safetensors import safe_open

    with safe_open(half / "model.safetensors", framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert "model.safetensors" in export_summary(half) and not any(p.suffix in (".bin", ".pt") for p in half.iterdir())


def test_export_gguf_from_a_checkpoint_and_from_a_hugging_face_directory(run_dir, bpe, tmp_path):
    run, model = run_dir
    tokens = torch.randint(0, 1000, (1, 20))
    path = export(run / "checkpoints" / "step-0000007", tmp_path / "a.gguf", format="gguf")
    assert field(GGUFReader(path), "general.name") == "tiny"
    with torch.no_grad():
        assert torch.equal(load_gguf(path)(tokens), model(tokens))
    hf = export(run, tmp_path / "hf")
    path = export(hf, tmp_path / "b.gguf", format="gguf", quant="q8_0")
    r = GGUFReader(path)
    assert field(r, "general.file_type") == 7 and field(r, "tokenizer.ggml.bos_token_id") == bpe.bos_id
    assert export_summary(path).startswith("b.gguf: ")


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(format="onnx"), ValueError, "unknown format 'onnx': use one of hf, gguf"),
    (dict(dtype="float8"), ValueError, "unknown dtype 'float8': use one of float32, float16, bfloat16"),
    (dict(format="gguf", quant="q4_k"), ValueError, "unknown quantization 'q4_k'"),
    (dict(quant="q8_0"), ValueError, "quantization 'q8_0' is for --format gguf"),
])
def test_export_bad_options(run_dir, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        export(run_dir[0], tmp_path / "out", **kwargs)
    assert sorted(tmp_path.iterdir()) == []


def test_export_refuses_existing_outputs_without_force(run_dir, tmp_path):
    run = run_dir[0]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    (tmp_path / "file.gguf").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists; pass --force"):
        export(run, tmp_path / "full")
    with pytest.raises(FileExistsError, match="already exists; pass --force"):
        export(run, tmp_path / "file.gguf", format="gguf")
    with pytest.raises(FileExistsError, match="is a directory; a GGUF export is one file"):
        export(run, tmp_path / "full", format="gguf", force=True)
    with pytest.raises(FileExistsError, match="is not a directory"):
        export(run, tmp_path / "file.gguf", force=True)
    # --force replaces an earlier export only: a folder of other files, or a file that is not GGUF, stays
    with pytest.raises(ValueError, match="holds files that are not an export"):
        export(run, tmp_path / "full", force=True)
    with pytest.raises(ValueError, match="is not a GGUF file"):
        export(run, tmp_path / "file.gguf", format="gguf", force=True)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine" and (tmp_path / "file.gguf").read_text() == "mine"
    export(run, tmp_path / "hf")
    export(run, tmp_path / "hf", force=True)
    export(run, tmp_path / "model.gguf", format="gguf")
    export(run, tmp_path / "model.gguf", format="gguf", force=True)
    assert (tmp_path / "model.gguf").stat().st_size > 1000 and (tmp_path / "hf" / "config.json").is_file()
    export(run, tmp_path / "empty-dir-is-fine")


def test_export_needs_the_tokenizer(run_dir, tmp_path):
    import shutil

    ckpt = run_dir[0] / "checkpoints" / "step-0000007"
    missing = tmp_path / "missing"
    shutil.copytree(ckpt, missing)
    (missing / BPETokenizer.FILENAME).unlink()
    with pytest.raises(ValueError, match="incomplete: its tokenizer file is missing"):
        export(missing, tmp_path / "a")
    unrecorded = tmp_path / "unrecorded"
    shutil.copytree(ckpt, unrecorded)
    state = json.loads((unrecorded / "state.json").read_text())
    state["tokenizer"] = None
    (unrecorded / "state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="holds no tokenizer"):
        export(unrecorded, tmp_path / "b", format="gguf")
    hf = export(ckpt, tmp_path / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (hf / name).unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer in"):
        export(hf, tmp_path / "c.gguf", format="gguf")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        export(tmp_path / "nowhere", tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "missing", "unrecorded"]


def test_cli_export(run_dir, tmp_path, capsys):
    run = run_dir[0]
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "m.gguf"), "--format", "gguf",
                 "--quant", "q8_0"]) == 0
    assert capsys.readouterr().out.startswith("m.gguf: ")
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "hf"), "--dtype", "float16"]) == 0
    assert "tokenizer.json" in capsys.readouterr().out
    bad = [["--format", "onnx"], ["--dtype", "int4"], ["--quant", "q8_0"], ["--out", str(tmp_path / "m.gguf"),
           "--format", "gguf"], ["--out", str(tmp_path / "hf")]]
    for args in bad:
        argv = ["export", "--ckpt", str(run), "--out", str(tmp_path / "new"), *args]
        assert main(argv) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("minillm export: error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "new").exists()


def test_run_isolated_reports_a_crash_instead_of_dying():
    "Native code that segfaults in the child (as llama.cpp can) becomes a RuntimeError here; this process lives on."
    import ctypes

    from minillm.export import run_isolated

    with pytest.raises(RuntimeError, match=r"string_at crashed its child process \(signal SIGSEGV\); this process is unaffected"):
        run_isolated(ctypes.string_at, 0)
    with pytest.raises(RuntimeError, match="int failed in its child process: ValueError: invalid literal"):
        run_isolated(int, "x")
    with pytest.raises(RuntimeError, match="did not finish within 0.5 s"):
        run_isolated(__import__("time").sleep, 30, timeout=0.5)
    assert run_isolated(sorted, [3, 1, 2]) == [1, 2, 3]
    assert run_isolated(os.system, "echo noise on stdout") == 0  # which cannot corrupt the result
