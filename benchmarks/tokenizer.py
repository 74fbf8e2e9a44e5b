"""Tokenizer benchmark: byte-level BPE training time (against SentencePiece's trainer) and encoding throughput
(against raw tiktoken with the same ranks), on text read from this Python's standard library.

    python benchmarks/tokenizer.py                  # 10 MB, vocabulary 8192, pinned to one core
    python benchmarks/tokenizer.py --mb 2 --vocab 4096 --repeats 3

The process pins itself to one CPU core (`--cpu`, default: the last one it may use), so every figure is a
single-core figure: our trainer is single-threaded, SentencePiece trains with num_threads=1, and encoding calls
`encode` one document at a time. Goals: training to 8192 tokens on 10 MB in at most 60 s; `Tokenizer.encode` at
90% or more of raw tiktoken's throughput. This is a measurement, not a test: it never fails on a slow machine.
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sentencepiece  # noqa: E402
import tiktoken  # noqa: E402

from minillm.tokenizer import GPT4_SPLIT_PATTERN, Tokenizer, _pretokenize, python_stdlib_texts  # noqa: E402


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=10.0, help="corpus size in MB of UTF-8 (default 10)")
    p.add_argument("--vocab", type=int, default=8192, help="vocabulary size to train (default 8192)")
    p.add_argument("--cpu", type=int, default=None, help="CPU core to pin to (default: the last allowed one)")
    p.add_argument("--repeats", type=int, default=5, help="encoding passes per tokenizer; the best is kept")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)

    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})

    texts, t_read = timed(lambda: list(python_stdlib_texts("source", max_bytes=int(args.mb * 1e6))))
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    chunks, t_pre = timed(lambda: _pretokenize(texts, GPT4_SPLIT_PATTERN))
    print(f"corpus: {len(texts)} stdlib source files, {n_bytes / 1e6:.2f} MB, {sum(chunks.values()):,} pre-tokenized "
          f"chunks, {len(chunks):,} distinct (read {t_read:.1f} s, pre-tokenize {t_pre:.1f} s)", flush=True)

    tok, t_bpe = timed(lambda: Tokenizer.train(texts, args.vocab))
    print(f"minillm BPE train to {args.vocab}: {t_bpe:.1f} s", flush=True)
    sp, t_sp = timed(lambda: Tokenizer.train_sentencepiece(texts, args.vocab, num_threads=1))
    print(f"sentencepiece BPE train to {args.vocab} (num_threads=1): {t_sp:.1f} s  → ours/theirs = {t_bpe / t_sp:.2f}",
          flush=True)

    raw = tiktoken.Encoding("raw", pat_str=tok.pattern, mergeable_ranks={b: i for i, b in enumerate(tok.vocab)},
                            special_tokens=tok.special_tokens)
    runs = {"minillm Tokenizer.encode": lambda: [tok.encode(t) for t in texts],
            "raw tiktoken encode_ordinary": lambda: [raw.encode_ordinary(t) for t in texts],
            "minillm SentencePiece encode": lambda: [sp.encode(t) for t in texts]}
    best = {name: float("inf") for name in runs}
    outputs = {}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits every contender alike
        for name, fn in runs.items():
            outputs[name], t = timed(fn)
            best[name] = min(best[name], t)
    assert outputs["minillm Tokenizer.encode"] == outputs["raw tiktoken encode_ordinary"], "ids differ from tiktoken's"
    n_tokens = sum(map(len, outputs["minillm Tokenizer.encode"]))
    for name, t in best.items():
        print(f"{name:32s} {n_bytes / t / 1e6:6.2f} MB/s  (best of {args.repeats}: {t:.3f} s)")
    ratio = best["raw tiktoken encode_ordinary"] / best["minillm Tokenizer.encode"]
    print(f"Tokenizer.encode / raw tiktoken throughput: {100 * ratio:.1f}%   "
          f"({n_bytes / n_tokens:.2f} bytes per token at vocab {args.vocab})")

    result = {
        "machine": {"cpu": cpu_name(), "pinned_core": cpu, "python": platform.python_version(),
                    "tiktoken": tiktoken.__version__, "sentencepiece": sentencepiece.__version__},
        "corpus": {"files": len(texts), "bytes": n_bytes, "chunks": sum(chunks.values()), "distinct_chunks": len(chunks)},
        "vocab_size": args.vocab,
        "train_s": {"minillm_bpe": round(t_bpe, 2), "sentencepiece_bpe_1thread": round(t_sp, 2),
                    "ratio": round(t_bpe / t_sp, 3)},
        "encode_MB_per_s": {name: round(n_bytes / t / 1e6, 3) for name, t in best.items()},
        "encode_ratio_vs_tiktoken": round(ratio, 4),
        "bytes_per_token": round(n_bytes / n_tokens, 3),
    }
    print(json.dumps(result["machine"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
