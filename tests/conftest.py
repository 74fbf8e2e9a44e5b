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
