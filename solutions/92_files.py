"""Worked solutions to the exercises of nbs/92_files.ipynb."""
import os
import tempfile
from pathlib import Path


def write_atomic(path, data):
    "A temporary file beside `path`, flushed to disk, then renamed over it; removed again if anything fails."
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish_dir(tmp, final):
    "Move an existing `final` aside, rename `tmp` into place, then delete the old copy."
    import shutil
    import uuid
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old)
