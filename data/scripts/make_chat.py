"""Build data/chat.jsonl: short conversations about the Python standard library, answered from its own docstrings,
in the `{"messages": [{"role": ..., "content": ...}]}` shape chat fine-tuning reads.

Each conversation asks about one public function or module and answers with its signature and the first paragraph
of its docstring (read with `ast`, never imported); some open with a system message, some ask a follow-up. The same
interpreter version gives the same file:

    python data/scripts/make_chat.py            # writes data/chat.jsonl
"""
from __future__ import annotations

import argparse
import ast
import json
import random
import warnings
from pathlib import Path

from minillm.corpora import stdlib_files, stdlib_root

OUT = Path(__file__).resolve().parent.parent / "chat.jsonl"
SYSTEM = "You are a concise assistant who answers questions about the Python standard library."
MAX_ANSWER = 500  # characters of docstring in one answer

ASK_FUNCTION = ["What does `{name}` do?", "Can you explain `{name}`?", "What is `{name}` for?",
                "I found `{name}` in some code. What does it do?", "Briefly, what does `{name}` do?"]
ASK_SIGNATURE = ["How do I call it?", "What arguments does it take?", "What is its signature?"]
ASK_MODULE = ["What is the `{name}` module for?", "What does the `{name}` module provide?",
              "Tell me about the `{name}` module."]


def first_paragraph(doc: str) -> str:
    "The docstring's first paragraph on one line, cut at a sentence end if it is long."
    para = " ".join(doc.strip().split("\n\n")[0].split())
    if len(para) > MAX_ANSWER:
        cut = para[:MAX_ANSWER].rfind(". ")
        para = para[:cut + 1] if cut > 0 else para[:MAX_ANSWER].rsplit(" ", 1)[0] + " ..."
    return para


def usable(text: str) -> bool:
    return text.isascii() and len(text) >= 30 and ">>>" not in text and "XXX" not in text


def entries(path: Path, module: str):
    "(kind, qualified name, signature or None, docstring paragraph) for the module and its public top-level functions."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            return
    if (doc := ast.get_docstring(tree)) and usable(para := first_paragraph(doc)):
        yield "module", module, None, para
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            if (doc := ast.get_docstring(node)) and usable(para := first_paragraph(doc)):
                yield "function", f"{module}.{node.name}", f"{module}.{node.name}({ast.unparse(node.args)})", para


def conversation(kind: str, name: str, signature: str | None, answer: str, rng: random.Random) -> dict:
    messages = [dict(role="system", content=SYSTEM)] if rng.random() < 0.3 else []
    if kind == "module":
        messages += [dict(role="user", content=rng.choice(ASK_MODULE).format(name=name)),
                     dict(role="assistant", content=f"The `{name}` module: {answer}")]
    elif rng.random() < 0.3:  # a follow-up turn asks for the signature
        messages += [dict(role="user", content=rng.choice(ASK_FUNCTION).format(name=name)),
                     dict(role="assistant", content=answer),
                     dict(role="user", content=rng.choice(ASK_SIGNATURE)),
                     dict(role="assistant", content=f"`{signature}`")]
    else:
        messages += [dict(role="user", content=rng.choice(ASK_FUNCTION).format(name=name)),
                     dict(role="assistant", content=f"`{signature}`: {answer}")]
    return dict(messages=messages)


def build(n: int, seed: int) -> list[dict]:
    root = stdlib_root()
    pool = []
    for path in stdlib_files(root):
        rel = path.relative_to(root).as_posix()
        parts = rel[:-3].split("/")
        if any(p.startswith("_") and p != "__init__" for p in parts) or parts[0] in ("idlelib", "lib2to3", "turtledemo"):
            continue  # private modules and the applications shipped with Python
        module = ".".join(parts).removesuffix(".__init__")
        pool += entries(path, module)
    rng = random.Random(seed)
    chosen = rng.sample(pool, min(n, len(pool)))
    return [conversation(*e, rng) for e in chosen]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=400, help="conversations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    rows = build(args.n, args.seed)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(args.out)
    print(f"{args.out}: {len(rows)} conversations, {args.out.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
