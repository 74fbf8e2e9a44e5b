import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
