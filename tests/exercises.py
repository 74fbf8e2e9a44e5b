"""What the tests of a chapter's exercises share: its worked solutions, and the two things asked of each check."""
import importlib.util
from pathlib import Path

import pytest

from minillm import check

SOLUTIONS = Path(__file__).resolve().parent.parent / "solutions"


def load_solutions(chapter: str):
    "The worked solutions of one chapter, `solutions/CHAPTER.py` (loaded by path: the name starts with a digit)."
    spec = importlib.util.spec_from_file_location(f"solutions_{chapter}", SOLUTIONS / f"{chapter}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def passes(name: str, solution, capsys, **options) -> None:
    "`check.NAME` passes the worked solution and says so."
    getattr(check, name)(solution, **options)
    assert capsys.readouterr().out.startswith(f"check.{name}: passed (")


def fails(name: str, wrong, where: str, **options) -> None:
    "`check.NAME` fails a wrong answer with a message that starts with the check's name and names the input `where`."
    with pytest.raises(AssertionError) as e:
        getattr(check, name)(wrong, **options)
    assert str(e.value).startswith(f"check.{name}: on "), str(e.value)
    assert where in str(e.value), str(e.value)
