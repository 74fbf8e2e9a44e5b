"""Worked solutions to the exercises of nbs/12b_checkpoint.ipynb."""
import shutil
from pathlib import Path


def find_checkpoint(path):
    "The folder itself when it holds state.json; else `latest` when it names a complete one; else the newest complete."
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    for root in (path / "checkpoints", path):
        latest = root / "latest"
        if latest.is_file():
            target = root / latest.read_text().strip()
            if target.name.startswith("step-") and (target / "state.json").is_file():
                return target
        complete = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())  # zero-padded: sorts by step
        if complete:
            return complete[-1]
    return None


def prune_checkpoints(root, keep, final):
    "Sort the complete step folders, remove all but the last `keep` (sparing `final`), then every hidden leftover."
    root = Path(root)
    complete = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())
    for old in complete[:-keep] if keep > 0 else []:
        if old != Path(final):
            shutil.rmtree(old)
    for junk in root.glob(".step-*"):
        shutil.rmtree(junk)
