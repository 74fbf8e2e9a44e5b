"""The package's shape, read from its source with `ast` (nothing is imported or run): data flows one way between
minillm's modules (no import cycle, counting imports made inside functions), no function is over 80 lines and no
module over 700."""
import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "minillm"
MAX_FUNCTION, MAX_MODULE = 80, 700


def modules() -> dict[str, Path]:
    "Every module of the package by dotted name (`minillm.kernels.switch`; a package by its own name), bar `_modidx`."
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_modidx.py":
            continue
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


@cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that module `name` imports anywhere in its source (top level or inside a function),
    each resolved to the module itself: `from . import x` is an import of module `x` when `x` is one, of the package
    otherwise. A module's own ancestors (packages Python runs on the way to it) are not counted."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import minillm.kernels.switch.x`: the longest module prefix
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):
                found.add(t)
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    "One import cycle of `graph` as the path a → b → ... → a, or None when there is none (depth-first search)."
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_walk_sees_imports_inside_functions(tmp_path):
    "The walk itself, on a made-up package: a cycle closed by an import inside a function is found."
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import c\n    return c\n")
    (pkg / "c.py").write_text("import os\n\ndef g():\n    from .a import f\n")
    paths = {"pkg": pkg / "__init__.py", "pkg.a": pkg / "a.py", "pkg.b": pkg / "b.py", "pkg.c": pkg / "c.py"}
    graph = {m: imports(m, p, set(paths)) for m, p in paths.items()}
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"}}
    assert cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    graph["pkg.c"] = set()
    assert cycle(graph) is None


def test_no_import_cycles():
    mods = modules()
    assert {"minillm", "minillm.train", "minillm.model", "minillm.kernels.switch"} <= set(mods)
    graph = {m: imports(m, p, set(mods)) for m, p in mods.items()}
    assert "minillm.train" in graph["minillm.finetune"] and "minillm.model" in graph["minillm.train"]
    found = cycle(graph)
    assert found is None, "import cycle among minillm's modules: " + " → ".join(found)
    assert not graph["minillm.model"] & {"minillm.train", "minillm.distributed", "minillm.checkpoint",
                                         "minillm.kernels.switch"}, "minillm.model imports training code"


def test_no_function_over_80_lines():
    long = []
    for name, path in modules().items():
        for node in ast.walk(parsed(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION} lines: " + ", ".join(long)


def test_no_module_over_700_lines():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    assert len(sizes) > 30 and sizes["minillm.train"] > 100
    big = [f"{name} ({n} lines)" for name, n in sorted(sizes.items()) if n > MAX_MODULE]
    assert not big, f"modules over {MAX_MODULE} lines: " + ", ".join(big)
