"""Build the course website: notebooks → nbdev's processed notebooks in `_proc/` → Sphinx + myst-nb → HTML in `_docs/`.

Quarto, which `nbdev_docs` needs, cannot be installed everywhere, so this script runs nbdev's notebook processors
itself (the ones that do not need Quarto or execute code: hidden cells and nbdev directives removed, ANSI colours
stripped), keeps the exported code visible (it is what the course teaches), adds the chapter list in reading order to
the front page, and hands `_proc/` to Sphinx with warnings as errors. Run it with `make docs`."""
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from execnb.nbio import read_nb, write_nb
from nbdev.config import get_config
from nbdev.processors import (FilterDefaults, clean_magics, filter_stream_, hide_, hide_line, populate_language,
                              rm_header_dash, strip_ansi, strip_hidden_metadata)

ROOT = Path(__file__).resolve().parent.parent
PROC, OUT = ROOT / "_proc", ROOT / "_docs"


class CourseProcs(FilterDefaults):
    "nbdev's docs processors without the Quarto-only ones, and without hiding exported code or running show_doc."
    def base_procs(self):
        return [populate_language, strip_ansi, hide_line, filter_stream_, rm_header_dash, clean_magics, hide_,
                strip_hidden_metadata]


def chapters() -> list[Path]:
    "Every notebook in reading order (file names sort in reading order: 00 … 11a … 11f … 91), the front page first."
    nbs = sorted(p for p in (ROOT / get_config().nbs_path.name).glob("*.ipynb") if p.stem != "index")
    return [ROOT / "nbs" / "index.ipynb"] + nbs


def process(path: Path, git_url: str) -> Path:
    "Run the processors on one notebook and write it to _proc/, with links to repository files made absolute."
    nb = read_nb(path)
    CourseProcs()(nb)
    for c in nb.cells:  # nbdev's export-only directive is not a processor's business: drop it here
        c.source = re.sub(r"^#\|\s*default_exp\b.*\n?", "", c.get("source", ""), flags=re.M)
    nb.cells = [c for c in nb.cells if c.source.strip()]  # directive-only cells are empty now
    for c in nb.cells:
        if c.cell_type == "markdown":  # a relative link to a file of the repository points at the repository
            c.source = re.sub(r"\]\((?!https?:|#|mailto:)([^)\s]+)\)", lambda m: f"]({git_url}/blob/main/{m[1]})", c.source)
    if path.stem == "index":
        toc = "\n".join(p.stem for p in chapters()[1:])
        nb.cells.append({"cell_type": "markdown", "metadata": {}, "id": "toctree",
                         "source": f"```{{toctree}}\n:caption: Chapters, in reading order\n:maxdepth: 1\n\n{toc}\n```"})
    out = PROC / path.name
    write_nb(nb, out)
    return out


def main() -> int:
    start = time.time()
    shutil.rmtree(PROC, ignore_errors=True)
    PROC.mkdir()
    git_url = get_config().git_url.rstrip("/")
    for path in chapters():
        process(path, git_url)
    # built inside _proc/ (myst-nb puts its output folder next to the HTML's), then moved to _docs/
    html = PROC / "_build" / "html"
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q", "-c", str(ROOT / "docs"),
           "-d", str(PROC / "_build" / "doctrees"), str(PROC), str(html)]
    code = subprocess.call(cmd, cwd=ROOT)
    if code == 0:
        shutil.rmtree(OUT, ignore_errors=True)
        shutil.move(html, OUT)
        print(f"docs: {len(chapters())} pages in {OUT.relative_to(ROOT)}/ ({time.time() - start:.0f} s)")
    return code


if __name__ == "__main__":
    sys.exit(main())
