"""`minillm prepare` throughput with 1 and 2 worker processes, and what it projects for TinyLlama's data.

    python benchmarks/prepare.py --json benchmarks/results/prepare.json      # defaults: --copies 4 --repeats 3

The corpus is this Python's standard library as `minillm.data.builtin_corpus` gives it (code and docstrings), written
`--copies` times as text files into a temporary folder, the way corpora come (SlimPajama is 59,166 files). Each
run is the real command path: `minillm.prepare.prepare_sources` on that folder, cut into 16 pieces; one worker
tokenizes every piece in its own process, two workers are two spawned processes taking whole pieces. Two tokenizers,
both trained here on the corpus's first 2 MB: minillm's byte-level BPE (encoded by tiktoken) and a SentencePiece BPE
of the same size (Llama 2's kind of tokenizer). Runs alternate (1, 2, 1, 2, ...); the best of `--repeats` is kept,
with the median beside it, and the load average before and after each, since the machine may be shared.

Throughput is UTF-8 bytes of text per second of wall time, from the start of the call to the published folder
(process start-up, reading, tokenizing, writing and merging included). On a machine shared with other jobs the wall
times measure the other jobs too, so each run also records CPU time: of this process (planning, merging, and with
one worker all the work) and of its worker processes (`RUSAGE_CHILDREN`, counted once they are reaped). From them:
the rate of one core (bytes per CPU second with one worker) and the wall time two idle cores would take with two
workers (this process's CPU time plus half its workers', the pieces being shared evenly), hence the speed-up and the
parallel efficiency that the load cannot blur. The projection uses those, for the text of SlimPajama-627B without
its GitHub part plus StarCoderData, on one 64-core node and on 8. A measurement, not a test.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minillm.corpora import builtin_corpus, training_documents  # noqa: E402
from minillm.prepare import prepare_sources, projected_hours  # noqa: E402
from minillm.tokenizer import Tokenizer  # noqa: E402

# The text TinyLlama tokenized, in bytes of UTF-8, from the datasets' own cards:
# SlimPajama-627B: its 1% sample SlimPajama-6B (train/chunk1 of 10, then 10%) is 23.92e9 bytes of text, so the whole
# is ~2.39e12; TinyLlama leaves out the GitHub part, 5.2% of the bytes. StarCoderData: 783 GB of code, 54 GB of
# GitHub issues, 13 GB of Jupyter notebooks and 32 GB of commits (~250B StarCoder tokens); TinyLlama's
# prepare_starcoder.py reads all of its parquet files.
SLIMPAJAMA_BYTES = 23.92e9 * 100 * (1 - 0.052)
STARCODER_BYTES = (783 + 54 + 13 + 32) * 1e9
NODE_CORES, NODES = 64, 8


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_corpus(folder: Path, copies: int) -> int:
    "The standard library's documents as text files, `copies` times over; the bytes written."
    docs = [d.text for d in builtin_corpus()]
    total = 0
    for c in range(copies):
        sub = folder / f"copy{c}"
        sub.mkdir(parents=True)
        for i, text in enumerate(docs):
            (sub / f"{i:05d}.txt").write_text(text, encoding="utf-8", errors="replace")
            total += len(text.encode("utf-8", "replace"))
    return total


def tokenizers(folder: Path) -> dict:
    "minillm's BPE and a SentencePiece BPE of 8,192 tokens, trained on the first 2 MB of training text."
    texts, size = [], 0
    for d in training_documents(builtin_corpus()):
        texts.append(d.text)
        size += len(d.text.encode("utf-8", "replace"))
        if size > 2e6:
            break
    bpe, sp = Tokenizer.train(texts, 8192), Tokenizer.train_sentencepiece(texts, 8192, num_threads=1)
    return {"minillm BPE (tiktoken)": bpe.save(folder / "bpe"), "SentencePiece BPE": sp.save(folder / "sp")}


def cpu_seconds(who) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def one_run(corpus: Path, tok: Path, out: Path, workers: int, piece_bytes: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()[0]
    cpu0, kids0, start = cpu_seconds(resource.RUSAGE_SELF), cpu_seconds(resource.RUSAGE_CHILDREN), time.perf_counter()
    info = prepare_sources(str(corpus), str(tok), out, num_workers=workers, piece_bytes=piece_bytes, progress=False)
    seconds = time.perf_counter() - start
    cpu, kids = cpu_seconds(resource.RUSAGE_SELF) - cpu0, cpu_seconds(resource.RUSAGE_CHILDREN) - kids0
    m = json.loads((out / info["datasets"][0]["folder"] / "manifest.json").read_text())
    return dict(seconds=seconds, cpu_self=cpu, cpu_workers=kids, idle_seconds=cpu + kids / workers, bytes=m["bytes"],
                tokens=m["tokens"], load_before=load, load_after=os.getloadavg()[0], fingerprint=m["fingerprint"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=4, help="copies of the standard library corpus (~12.6 MB each)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pieces", type=int, default=16)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="minillm-bench-prepare-"))
    try:
        total = make_corpus(work / "corpus", args.copies)
        toks = tokenizers(work)
        results = {}
        for name, tok in toks.items():
            runs = {1: [], 2: []}
            for _ in range(args.repeats):
                for w in (1, 2):
                    runs[w].append(one_run(work / "corpus", tok, work / "out", w, total // args.pieces + 1))
                    r = runs[w][-1]
                    print(f"{name}, {w} worker(s): {r['bytes'] / r['seconds'] / 1e6:.2f} MB/s wall, "
                          f"{r['bytes'] / r['idle_seconds'] / 1e6:.2f} MB/s on idle cores (CPU {r['cpu_self']:.1f} s "
                          f"+ workers {r['cpu_workers']:.1f} s; load {r['load_before']:.2f} → {r['load_after']:.2f})",
                          flush=True)
            assert len({r["fingerprint"] for rs in runs.values() for r in rs}) == 1, "runs made different tokens"
            rate = lambda key: {w: [r["bytes"] / r[key] for r in rs] for w, rs in runs.items()}
            wall, idle = rate("seconds"), rate("idle_seconds")
            best = {w: max(v) for w, v in wall.items()}
            best_idle = {w: max(v) for w, v in idle.items()}
            speedup, speedup_idle = best[2] / best[1], best_idle[2] / best_idle[1]
            text, eff = SLIMPAJAMA_BYTES + STARCODER_BYTES, min(speedup_idle / 2, 1.0)
            results[name] = dict(
                bytes=runs[1][0]["bytes"], tokens=runs[1][0]["tokens"], runs={str(w): rs for w, rs in runs.items()},
                best_bytes_per_s={str(w): v for w, v in best.items()},
                median_bytes_per_s={str(w): statistics.median(v) for w, v in wall.items()},
                best_idle_bytes_per_s={str(w): v for w, v in best_idle.items()},
                speedup_2_workers=speedup, speedup_2_workers_idle=speedup_idle,
                projection=dict(text_bytes=text, per_core_bytes_per_s=best_idle[1], efficiency=eff,
                                hours_1_core=projected_hours(text, best_idle[1], 1),
                                hours_1_node=projected_hours(text, best_idle[1], NODE_CORES, 1, eff),
                                hours_8_nodes=projected_hours(text, best_idle[1], NODE_CORES, NODES, eff)))
            p = results[name]["projection"]
            print(f"{name}: wall {best[1] / 1e6:.2f} → {best[2] / 1e6:.2f} MB/s ({speedup:.2f}×); idle cores "
                  f"{best_idle[1] / 1e6:.2f} → {best_idle[2] / 1e6:.2f} MB/s ({speedup_idle:.2f}×); TinyLlama's "
                  f"{text / 1e12:.2f} TB: {p['hours_1_node']:.1f} h on 1×{NODE_CORES} cores, {p['hours_8_nodes']:.2f} h "
                  f"on {NODES}×{NODE_CORES}", flush=True)
        report = dict(machine=dict(cpu=cpu_name(), cores=os.cpu_count(), python=platform.python_version()),
                      corpus=dict(copies=args.copies, bytes=total, pieces=args.pieces), repeats=args.repeats,
                      text=dict(slimpajama_without_github=SLIMPAJAMA_BYTES, starcoderdata=STARCODER_BYTES),
                      node_cores=NODE_CORES, nodes=NODES, results=results)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
