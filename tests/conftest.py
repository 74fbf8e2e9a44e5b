import os
import sys
from pathlib import Path

import pytest

# Triton kernels run on the CPU through Triton's interpreter, which must be chosen before triton is imported.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread per test process: pytest-xdist already runs one process per core, and tiny ops slow
    down by orders of magnitude when two processes each spin two threads on two cores."""
    import torch

    torch.set_num_threads(1)
