"""8- and 4-bit weights on the toy checkpoint: bits per byte on text it never trained on, scored as `minillm eval
--data` scores it (`minillm.evaluate.text_bpb`), and on the run's own validation split (also never trained on, in the
training data's domain; scored as the trainer scores it), for full precision, int8, and int4 round-to-nearest and GPTQ in groups
of 32, 64 and 128; the size of each checkpoint's weights file; and TinyLlama-1.1B's exact packed sizes, counted on the
meta device.

    PYTHONPATH=. python benchmarks/quantize.py --ckpt runs/toy [--text data/heldout.txt] [--json out.json]

Every quantized checkpoint is made by `minillm quantize` itself (GPTQ: 128 calibration windows of 128 tokens drawn
from the checkpoint's own training data). GPTQ's share of RTN's gap = (bpb RTN − bpb GPTQ) / (bpb RTN − bpb full).
"""
import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

import torch

ROWS = [  # label, bits, group size, method, extra options
    ("int8 per row, RTN", 8, None, "rtn", []),
    ("int4 per row, RTN", 4, 0, "rtn", []), ("int4 per row, GPTQ", 4, 0, "gptq", []),
    ("int4 g128, RTN", 4, 128, "rtn", []), ("int4 g128, GPTQ", 4, 128, "gptq", []),
    ("int4 g64, RTN", 4, 64, "rtn", []), ("int4 g64, GPTQ", 4, 64, "gptq", []),
    ("int4 g32, RTN", 4, 32, "rtn", []), ("int4 g32, GPTQ", 4, 32, "gptq", []),
    ("int4 g32 zero point, RTN", 4, 32, "rtn", ["--scheme", "asymmetric"]),
    ("int4 Q4_0 (llama.cpp), RTN", 4, 32, "rtn", ["--scheme", "q4_0"]),
    ("int4 g32 + 4-bit embedding/head, RTN", 4, 32, "rtn", ["--embed-bits", "4"]),
    ("int4 g32 + 4-bit embedding/head, GPTQ", 4, 32, "gptq", ["--embed-bits", "4"]),
]


def tinyllama_sizes() -> dict:
    "Exact packed bytes of TinyLlama-1.1B per layout (built and quantized on the meta device)."
    from minillm.config import LlamaConfig
    from minillm.model import Llama
    from minillm.quantize import packed_bytes, quantize_model

    with torch.device("meta"):
        tiny = Llama(LlamaConfig.from_name("tinyllama-1.1b"))
    out = {"parameters": tiny.num_params(), "params_x_4_bits": tiny.num_params() // 2}
    for g in (32, 64, 128):
        for embed_bits in (8, 4):
            out[f"int4 g{g}, embedding/head {embed_bits}-bit"] = packed_bytes(quantize_model(tiny, 4, g, embed_bits=embed_bits))
    return out


def val_bpb_fn(ckpt: str):
    "A scorer of the run's own validation split (held out by source unit, never trained on), as the trainer scores it."
    from minillm.data import EvalSet, Loader
    from minillm.checkpoint import Checkpoint
    from minillm.train import evaluate, prepare_data

    found = Checkpoint(ckpt)
    run = found.path.parent.parent
    mix = prepare_data(found.train_config.data, found.tokenizer(), run / "data", progress=False)
    evalset = EvalSet(Loader(mix, found.config.max_seq_len, 16, 16))
    return lambda model: evaluate(model, evalset, 16)[1]


def main():
    from minillm.cli import main as cli
    from minillm.evaluate import text_bpb
    from minillm.export import load_for_export
    from minillm.checkpoint import find_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--text", default="data/heldout.txt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="benchmarks/results/quantize_toy.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    texts = [Path(args.text).read_text(encoding="utf-8")]
    model, tok, _ = load_for_export(args.ckpt)
    val_bpb = val_bpb_fn(args.ckpt)
    full = text_bpb(model, tok, texts)
    rows = [dict(label="float32 (training checkpoint)", bpb=full["bpb"], val_bpb=val_bpb(model),
                 file_bytes=(find_checkpoint(args.ckpt) / "model.safetensors").stat().st_size)]
    print(f"{rows[0]['label']:<40} bpb {full['bpb']:.4f}  val {rows[0]['val_bpb']:.4f}  "
          f"{rows[0]['file_bytes'] / 1e6:6.2f} MB", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for label, bits, group, method, extra in ROWS:
            out = Path(tmp) / label.replace(" ", "_").replace("/", "-")
            argv = ["quantize", "--ckpt", args.ckpt, "--out", str(out), "--bits", str(bits), "--method", method, *extra]
            if group is not None:
                argv += ["--group-size", str(group or model.cfg.ffn_dim)]  # 0: a group as wide as the widest row
            with contextlib.redirect_stdout(io.StringIO()):
                assert cli(argv) == 0, argv
            qmodel, qtok, _ = load_for_export(out)
            r = text_bpb(qmodel, qtok, texts)
            rows.append(dict(label=label, bpb=r["bpb"], val_bpb=val_bpb(qmodel),
                             file_bytes=(out / "model.safetensors").stat().st_size, change=r["bpb"] / full["bpb"] - 1))
            rows[-1]["val_change"] = rows[-1]["val_bpb"] / rows[0]["val_bpb"] - 1
            print(f"{label:<40} bpb {r['bpb']:.4f} ({rows[-1]['change']:+.2%})  val {rows[-1]['val_bpb']:.4f} "
                  f"({rows[-1]['val_change']:+.2%})  {rows[-1]['file_bytes'] / 1e6:6.2f} MB", flush=True)
    closed = {}
    for key in ("bpb", "val_bpb"):
        by = {r["label"]: r[key] for r in rows}
        for g in ("per row", 128, 64, 32):
            name = g if g == "per row" else f"g{g}"
            rtn, gptq = by[f"int4 {name}, RTN"], by[f"int4 {name}, GPTQ"]
            closed[f"{key} {name}"] = (rtn - gptq) / (rtn - rows[0][key])
            print(f"{key}: GPTQ closes {closed[f'{key} {name}']:.0%} of RTN's gap ({name})")
    sizes = tinyllama_sizes()
    for k, v in sizes.items():
        print(f"TinyLlama-1.1B {k}: {v:,}" + (f" bytes = {v / 1e6:.1f} MB" if k != "parameters" else ""))
    import hashlib

    result = dict(checkpoint=args.ckpt, text=args.text, text_sha256=hashlib.sha256(texts[0].encode()).hexdigest(),
                  text_bytes=full["bytes"], text_tokens=full["tokens"],
                  rows=rows, gptq_gap_closed=closed, tinyllama_bytes=sizes)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
