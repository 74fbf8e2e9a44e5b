"""Render README.md from nbs/index.ipynb (quarto, which nbdev_readme needs, is not available everywhere).

Markdown cells are copied; code cells become ```python blocks followed by their text output.
Cells flagged `#| hide` are left out. CI fails when the committed README.md differs from this rendering.
"""
import json
import re
from pathlib import Path

root = Path(__file__).resolve().parent.parent
nb = json.loads((root / "nbs" / "index.ipynb").read_text(encoding="utf-8"))
directive = re.compile(r"^#\s*\|\s*(.*)$")

parts = []
for cell in nb["cells"]:
    src = "".join(cell["source"])
    lines = src.splitlines()
    flags = {m.group(1).split()[0] for l in lines if (m := directive.match(l)) and m.group(1).split()}
    if "hide" in flags:
        continue
    body = "\n".join(l for l in lines if not directive.match(l)).strip("\n")
    if cell["cell_type"] == "markdown":
        parts.append(body)
    elif cell["cell_type"] == "code" and body:
        parts.append(f"```python\n{body}\n```")
        text = ""
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text += "".join(out["text"])
            elif "text/plain" in out.get("data", {}):
                text += "".join(out["data"]["text/plain"]) + "\n"
        if text.strip():
            parts.append(f"```\n{text.rstrip()}\n```")

header = "<!-- generated from nbs/index.ipynb by .ci/readme.py (`make sync`); edit the notebook, not this file -->\n\n"
(root / "README.md").write_text(header + "\n\n".join(parts) + "\n", encoding="utf-8")
