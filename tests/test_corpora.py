"""Tests for minillm.corpora: text files, JSON lines, Parquet and folders as documents, `--data` values, Hugging
Face sources, the built-in corpus, bad inputs."""
import gzip
from pathlib import Path

import pytest

from minillm import corpora as C


def test_text_jsonl_parquet_and_folder_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "corpus"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "b.txt").write_text("plain text file")
    (root / "a.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "x": 1}\n')
    with gzip.open(root / "sub" / "c.jsonl.gz", "wt") as f:
        f.write('{"content": "zipped", "text": "three"}\n')
    pq.write_table(pa.table({"text": ["row one", None, "row three"], "n": [1, 2, 3]}), root / "sub" / "deeper" / "d.parquet")
    (root / ".hidden.txt").write_text("never read")
    (root / "sub" / "image.bin").write_bytes(bytes([0xFF, 0xFE, 0x00, 0x81]))
    with pytest.warns(UserWarning, match="skipped 1 file.*sub/image.bin"):
        docs = list(C.local_documents(root))
    assert [d.text for d in docs] == ["one", "two", "plain text file", "three", "row one", "row three"]
    assert docs[0].name == "a.jsonl:1" and docs[1].name == "a.jsonl:3"
    # the same through command-line specs, one file at a time
    assert [d.text for d in C.Source.parse(str(root / "b.txt")).documents()] == ["plain text file"]
    assert [d.text for d in C.Source.parse(f"{root}/sub/c.jsonl.gz?field=content").documents()] == ["zipped"]
    assert [d.text for d in C.Source.parse(f"{root}/sub/deeper/d.parquet").documents()] == ["row one", "row three"]
    assert [d.text for d in C.Source.parse(f"{root}?max_documents=2").documents()] == ["one", "two"]


def test_source_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        C.local_documents(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no such file or folder: .*nope.jsonl"):
        C.parse_data(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no files"):
        C.local_documents(tmp_path / "empty")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: no text field 'text' \(found: body\); name the field with \?field=NAME"):
        list(C.local_documents(bad))
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON line"):
        list(C.local_documents(bad))
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not UTF-8 text"):
        list(C.local_documents(binary))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "t.parquet")
    with pytest.raises(ValueError, match=r"no column 'text' \(columns: body\)"):
        list(C.local_documents(tmp_path / "t.parquet"))


def test_parse_data_specs_and_mixtures(tmp_path):
    mix = C.parse_data("tinyllama")
    assert [(s.kind, s.target, s.weight) for s in mix] == [
        ("hf", "cerebras/SlimPajama-627B", 0.7), ("hf", "bigcode/starcoderdata", 0.3)]
    assert C.HF_DATASETS["bigcode/starcoderdata"]["field"] == "content"
    keep = C.HF_DATASETS["cerebras/SlimPajama-627B"]["keep"]
    assert keep({"meta": {"redpajama_set_name": "RedPajamaC4"}}) and not keep({"meta": {"redpajama_set_name": "RedPajamaGithub"}})
    s = C.parse_data(["builtin?max_bytes=2e6&kinds=prose@3", "builtin?kinds=code@1"])
    assert [x.weight for x in s] == [0.75, 0.25]
    assert s[0].options == {"max_bytes": 2_000_000, "kinds": ("prose",)}
    assert s[0].spec == "builtin?kinds=prose&max_bytes=2000000"
    assert C.parse_data("hf:roneneldan/TinyStories")[0].target == "roneneldan/TinyStories"
    half = C.parse_data(["tinyllama@1", "builtin@1"])
    assert [x.weight for x in half] == pytest.approx([0.35, 0.15, 0.5])
    f = tmp_path / "weird@2.txt"  # an existing path is taken literally
    f.write_text("x")
    assert C.parse_data(str(f))[0].target == str(f)
    for bad, err in [("builtin?max_byte=1", "unknown option 'max_byte'.*valid: kinds"),
                     ("builtin?max_bytes=-5", "must be a positive whole number"),
                     ("builtin?kinds=poetry", "kinds must be among code, prose"),
                     ("builtin@0", "weight after '@' must be a positive number"),
                     ("hf:", "name the dataset after 'hf:'"), ("", "empty data source")]:
        with pytest.raises(ValueError, match=err):
            C.parse_data(bad)
    with pytest.raises(ValueError, match="no data source"):
        C.parse_data([])


def fake_stdlib(root: Path):
    (root / "pkg").mkdir(parents=True)
    (root / "alpha.py").write_text('"""Alpha module."""\n\ndef f():\n    """Does f."""\n    return 1\n')
    (root / "pkg" / "__init__.py").write_text("X = 1\n")
    (root / "pkg" / "beta.py").write_text('class B:\n    """A B."""\n    def m(self):\n        """Method m."""\n')
    for skipped in ("test", "site-packages", "idlelib/idle_test", "__pycache__"):
        (root / skipped).mkdir(parents=True, exist_ok=True)
        (root / skipped / "skip_me.py").write_text('"""Never read."""\n')
    (root / "encodings").mkdir()
    (root / "encodings" / "cp0.py").write_text('""" Python Character Mapping Codec generated from x.txt """\n')
    (root / "_sysconfigdata__linux.py").write_text("build_time_vars = {}\n")
    (root / "pydoc_data").mkdir()
    (root / "pydoc_data" / "topics.py").write_text("# Autogenerated by Sphinx\ntopics = {'with': 'The with statement\\n', 'if': 'The if statement\\n'}\n")
    return root


def test_builtin_corpus_on_a_fake_stdlib(tmp_path):
    root = fake_stdlib(tmp_path / "lib")
    files = [p.relative_to(root).as_posix() for p in C.stdlib_files(root)]
    assert files == ["alpha.py", "pkg/__init__.py", "pkg/beta.py"]
    docs = list(C.builtin_corpus(root=root))
    by_name = {(d.kind, d.name): d.text for d in docs}
    assert set(by_name) == {("code", "alpha.py"), ("code", "pkg/__init__.py"), ("code", "pkg/beta.py"),
                            ("prose", "alpha.py"), ("prose", "pkg/beta.py"), ("prose", "help/if"), ("prose", "help/with")}
    assert by_name[("prose", "alpha.py")] == "alpha\nAlpha module.\n\nalpha.f\nDoes f."
    assert by_name[("prose", "pkg/beta.py")] == "pkg.beta.B\nA B.\n\npkg.beta.B.m\nMethod m."
    assert by_name[("prose", "help/with")] == "The with statement"
    assert [d.name for d in docs] == [d.name for d in C.builtin_corpus(root=root)]  # deterministic
    assert {d.kind for d in C.builtin_corpus(kinds=["code"], root=root)} == {"code"}
    capped = list(C.builtin_corpus(max_bytes=60, root=root))
    assert sum(len(d.text.encode()) for d in capped) <= 60
    assert [d.name for d in capped] == [d.name for d in docs[:len(capped)]]
    with pytest.raises(ValueError, match="choose from code, prose"):
        C.builtin_corpus(kinds=["poems"])
    with pytest.raises(FileNotFoundError, match="standard library folder not found"):
        C.stdlib_files(tmp_path / "nowhere")


def test_builtin_corpus_on_this_python():
    docs = list(C.builtin_corpus(max_documents=40))
    assert len(docs) == 40
    assert {d.kind for d in docs} == {"code", "prose"}
    assert not any("site-packages" in d.name or d.name.startswith("test/") or "/test/" in d.name for d in docs)
    assert [d.name for d in docs] == [d.name for d in C.builtin_corpus(max_documents=40)]
    capped = list(C.builtin_corpus(max_bytes=200_000))
    assert 0 < sum(len(d.text.encode()) for d in capped) <= 200_000
    assert C.Source.parse("builtin?max_bytes=200000").describe().startswith("builtin?max_bytes=200000 (Python ")


def test_as_documents_reads_one_source(tmp_path):
    "What `prepare` reads: documents given in Python, a `Source`, or one `--data` value; a mixture is refused."
    desc, docs = C.as_documents(["a text", C.Document("def f(): pass", "code", "f.py", unit="f.py")], "mine")
    assert desc == "mine"
    assert list(docs) == [C.Document("a text"), C.Document("def f(): pass", "code", "f.py", "f.py")]
    assert C.as_documents(["x"])[0] == "documents given in Python"
    f = tmp_path / "rows.jsonl"
    f.write_text('{"text": "one"}\n{"text": "two"}\n')
    for source in (str(f), C.Source.parse(str(f))):
        desc, docs = C.as_documents(source)
        assert desc.startswith(f"{f} (local: ") and [d.text for d in docs] == ["one", "two"]
    with pytest.raises(ValueError, match="'tinyllama' is a mixture of 2 sources: prepare each one"):
        C.as_documents("tinyllama")
