import os
from pathlib import Path

import pytest

# Triton kernels run on the CPU through Triton's interpreter, which must be chosen before triton is imported.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread per test process: pytest-xdist already runs one process per core, and tiny ops slow
    down by orders of magnitude when two processes each spin two threads on two cores."""
    import torch

    torch.set_num_threads(1)


# A small corpus and two tokenizers trained on it, shared by the tokenizer and export tests (trained once per worker).
TOKENIZER_TEXTS = [
    "The quick brown fox jumps over the lazy dog. It's 2024; we'll see 12345 foxes!",
    "Größenwahn, naïve café, déjà vu — ça va?",
    "日本語のテキストと漢字、そしてカタカナ。中文文本也在这里。",
    "Русский текст и ελληνικά γράμματα.",
    "emoji 👩‍👩‍👧 🇫🇷 👋🏽 🙂🙂🙂",
    "    def f(x):\n        return x ** 2  # indent\n",
]


@pytest.fixture(scope="session")
def corpus():
    from minillm.tokenizer import python_stdlib_texts

    return list(python_stdlib_texts(max_bytes=300_000)) + TOKENIZER_TEXTS * 3


@pytest.fixture(scope="session")
def bpe(corpus):
    from minillm.tokenizer import Tokenizer

    return Tokenizer.train(corpus, vocab_size=1000, special_tokens=("<s>", "</s>", "<|user|>"))


@pytest.fixture(scope="session")
def sp(corpus):
    from minillm.tokenizer import Tokenizer

    return Tokenizer.train_sentencepiece(corpus, vocab_size=800, special_tokens=("<|user|>",), num_threads=1)
