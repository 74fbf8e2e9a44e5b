"""Build data/stdlib_mc.jsonl: multiple-choice items in HellaSwag's JSON-lines shape, drawn from the Python standard
library's own source.

Two kinds of item, each with one true ending and three taken from other modules:
- `code`: up to eight lines of a module and the first part of the next statement, cut before a space that follows
  `=`, `,` or a keyword such as `return`; the ending is the rest of the statement. The context always holds a clue
  (a name the true ending uses) and no wrong ending uses a name of the context, so the item can be answered by
  reading the context; the four endings have similar lengths in characters and in tokens (a BPE like the toy's), so
  that a model that knows nothing scores chance.
- `docstring`: a `def` line, the opening quotes and the first words of the function's summary line; the ending is
  the rest of that line.

Context and ending meet at a space (the ending starts with it), so they are joined with nothing in between and
every tokenizer splits them there. Only modules outside the toy preset's training text are used (the first 6 MB of
`minillm.corpora.builtin_corpus`, in its fixed order), so a toy model never read them. The same interpreter version
gives the same file:

    python data/scripts/make_stdlib_mc.py            # writes data/stdlib_mc.jsonl
"""
from __future__ import annotations

import argparse
import ast
import io
import json
import random
import re
import tokenize
import warnings
from collections import Counter, defaultdict
from pathlib import Path

from minillm.corpora import builtin_corpus, stdlib_files, stdlib_root
from minillm.tokenizer import Tokenizer, python_stdlib_texts

OUT = Path(__file__).resolve().parent.parent / "stdlib_mc.jsonl"
TOY_TRAINING_BYTES = 6_000_000  # the toy preset's `builtin?max_bytes=6000000`
CONTEXT_LINES, CONTEXT_CHARS = 8, 320


def ascii_text(s: str) -> bool:
    return s.isascii() and "\t" not in s and "\r" not in s


def statement_rows(source: str) -> tuple[set[int], set[int], set[int]]:
    """Rows (0-based) of `source` that hold a whole one-row statement, rows where any statement starts, and rows
    inside a string that spans several rows (docstrings)."""
    one_row, starts, in_string = set(), set(), set()
    first = None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
                in_string.update(range(tok.start[0] - 1, tok.end[0]))
            if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING):
                continue
            if tok.type == tokenize.NEWLINE:
                if first is not None:
                    starts.add(first - 1)
                    if tok.start[0] == first:
                        one_row.add(first - 1)
                first = None
            elif first is None:
                first = tok.start[0]
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return set(), set(), set()
    return one_row, starts, in_string


CUT_AFTER = ("=", ",", "return", "in", "and", "or", "not", "if", "else", "is")  # cut before the space after these
COMMON = frozenset("self cls None True False return def class for not and the len str int isinstance raise elif else "
                   "import from with yield lambda while try except pass break continue assert print list dict set tuple"
                   .split())


def identifiers(text: str) -> set[str]:
    "Names of three or more characters in `text`, less Python's keywords and the most common builtins."
    return {w for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]{2,}", text) if w not in COMMON}


def split_point(line: str, rng: random.Random) -> int | None:
    """Where to cut a line of code: before a space that follows `=`, `,` or a keyword such as `return` or `in`, in
    the middle half of the line, so that context and ending meet at a word boundary every tokenizer respects."""
    spots = [i for i, ch in enumerate(line) if ch == " " and 0.25 * len(line) <= i <= 0.75 * len(line)
             and line[:i].endswith(CUT_AFTER) and len(line) - i >= 8 and line[i + 1:i + 2] not in (" ", "")]
    return rng.choice(spots) if spots else None


def code_candidates(source: str, module: str, rng: random.Random):
    """(context, ending) pairs: up to CONTEXT_LINES lines and the first part of a statement, then the rest of it."""
    lines = source.splitlines()
    one_row, starts, in_string = statement_rows(source)
    for i in sorted(one_row):
        line, body = lines[i], lines[i].strip()
        if i < 3 or not 24 <= len(body) <= 90 or not ascii_text(line) or body.startswith(("@", '"', "'")):
            continue
        if "#" in body or (cut := split_point(line, rng)) is None or cut <= len(line) - len(body):
            continue
        if not identifiers(line[cut:]) & identifiers("\n".join(lines[max(0, i - CONTEXT_LINES):i]) + line[:cut]):
            continue  # the context must hold a clue: a name the right ending uses
        start, best = i - 1, None
        while start >= 0 and i - start <= CONTEXT_LINES and len("\n".join(lines[start:i])) <= CONTEXT_CHARS:
            if start in starts:
                best = start
            start -= 1
        if best is None or any(r in in_string for r in range(best, i)):
            continue
        ctx = "\n".join(lines[best:i] + [line[:cut]])
        if len(ctx) < 60 or not ascii_text(ctx):
            continue  # too little to go on
        yield dict(kind="code", module=module, line=i + 1, ctx=ctx, ending=line[cut:].rstrip(), key=body)


def docstring_candidates(source: str, module: str, rng: random.Random):
    "(context, ending) pairs: a function's `def` line, its opening quotes and the first part of its summary, then the rest."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            return
    lines = source.splitlines()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("__"):
            continue
        doc = ast.get_docstring(node, clean=True)
        if not doc or not isinstance(node.body[0], ast.Expr) or node.body[0].lineno - node.lineno != 1:
            continue  # a one-line def and the docstring right below it
        summary = doc.splitlines()[0].strip()
        opening = lines[node.body[0].lineno - 1]
        quote_at = opening.find('"""')
        if not 30 <= len(summary) <= 90 or not ascii_text(summary) or quote_at < 0 \
                or opening[quote_at + 3:quote_at + 3 + len(summary)] != summary:
            continue  # the summary must follow the quotes on the same line, as written
        words = [i for i, ch in enumerate(summary) if ch == " " and 0.3 * len(summary) <= i <= 0.7 * len(summary)
                 and summary[i - 1] != " " and summary[i + 1] != " "]
        if not words:
            continue
        cut = rng.choice(words)  # the ending is the rest of the sentence, from a space on
        ctx = lines[node.lineno - 1].rstrip() + "\n" + opening[:quote_at + 3] + summary[:cut]
        if not ascii_text(ctx) or len(ctx) > CONTEXT_CHARS:
            continue
        yield dict(kind="docstring", module=module, line=node.lineno, ctx=ctx, ending=summary[cut:], key=summary)


def build(n_code: int, n_docstring: int, seed: int) -> list[dict]:
    root = stdlib_root()
    seen = {d.name for d in builtin_corpus(max_bytes=TOY_TRAINING_BYTES)}  # relative paths and help/ topics
    pool = defaultdict(list)
    rng = random.Random(seed)
    for path in stdlib_files(root):
        rel = path.relative_to(root).as_posix()
        if rel in seen:
            continue
        module = rel[:-3].replace("/", ".").removesuffix(".__init__")
        source = path.read_text(encoding="utf-8", errors="replace")
        pool["code"] += code_candidates(source, module, rng)
        pool["docstring"] += docstring_candidates(source, module, rng)
    # a rare name costs a model more tokens than a common one, so the true ending (which reuses the context's names)
    # would be the longest in tokens and a model that knew nothing would avoid it; wrong endings are picked to be as
    # long in tokens (±1) under a byte-level BPE like the toy's, trained on the library's first megabyte
    pieces = Tokenizer.train(python_stdlib_texts(max_bytes=1_000_000), vocab_size=1024)
    items = []
    for kind, n in (("code", n_code), ("docstring", n_docstring)):
        cands = pool[kind]
        for c in cands:
            c["pieces"] = len(pieces.encode(c["ending"]))
        counts = Counter(c["key"] for c in cands)
        cands = [c for c in cands if counts[c["key"]] == 1]  # an ending written twice in the library is ambiguous
        rng.shuffle(cands)
        used_modules = Counter()
        for c in cands:
            if len([i for i in items if i["kind"] == kind]) >= n:
                break
            if used_modules[c["module"]] >= 3:  # spread the items over many modules
                continue
            lo, hi = 0.75 * len(c["ending"]), 1.33 * len(c["ending"])
            clues = identifiers(c["ctx"])
            others = [o for o in cands if o["module"] != c["module"] and lo <= len(o["ending"]) <= hi
                      and abs(o["pieces"] - c["pieces"]) <= 1
                      and o["ending"] != c["ending"] and not (kind == "code" and identifiers(o["ending"]) & clues)]
            others = list({o["ending"]: o for o in others}.values())  # four different endings
            if len(others) < 3:
                continue
            endings = [c["ending"]] + [o["ending"] for o in rng.sample(others, 3)]
            rng.shuffle(endings)
            used_modules[c["module"]] += 1
            items.append(dict(c, endings=endings, label=endings.index(c["ending"])))
    rng.shuffle(items)
    return [dict(ind=i, activity_label=it["module"], ctx_a=it["ctx"], ctx_b="", ctx=it["ctx"], endings=it["endings"],
                 source_id=f"{it['module']}:{it['line']}", split="val", split_type=it["kind"], label=it["label"])
            for i, it in enumerate(items)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", type=int, default=600, help="items of kind code")
    p.add_argument("--docstring", type=int, default=400, help="items of kind docstring")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    items = build(args.code, args.docstring, args.seed)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(it) + "\n" for it in items), encoding="utf-8")
    tmp.replace(args.out)
    print(f"{args.out}: {len(items)} items ({Counter(i['split_type'] for i in items)}), "
          f"{args.out.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
