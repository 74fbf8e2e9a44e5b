"""Every notebook runs top to bottom through nbdev's own runner, skipping the cells flagged in tst_flags.

Each notebook runs in its own process (like a fresh kernel), so one chapter's state cannot leak into another.
"""
import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p for p in (ROOT / "nbs").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def tst_flags():
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini")
    return cfg["DEFAULT"]["tst_flags"].split()


RUNNER = """
import sys
from pathlib import Path
from nbdev.test import test_nb
ok, secs = test_nb(Path(sys.argv[1]), skip_flags=sys.argv[2].split(), showerr=True)
print(f"{sys.argv[1]}: {'ok' if ok else 'FAILED'} in {secs:.1f} s")
sys.exit(0 if ok else 1)
"""


def test_flags_are_slow_and_gpu():
    assert {"slow", "gpu"} <= set(tst_flags())


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook(nb):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg")
    res = subprocess.run([sys.executable, "-c", RUNNER, str(nb), " ".join(tst_flags())],
                         cwd=nb.parent, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{nb.name} failed:\n{res.stdout[-4000:]}\n{res.stderr[-8000:]}"
