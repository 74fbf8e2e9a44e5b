import subprocess
import sys

import pytest

from minillm.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "minillm", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_subcommands():
    res = run("--help")
    assert res.returncode == 0
    assert "usage: minillm" in res.stdout and "info" in res.stdout


def test_info(capsys):
    assert main(["info", "--preset", "tinyllama-1.1b"]) == 0
    out = capsys.readouterr().out
    assert "1,100,048,384" in out and "7.314 GFLOP" in out


def test_bad_preset_is_one_line_error():
    res = run("info", "--preset", "nope")
    assert res.returncode == 2
    assert "invalid choice: 'nope'" in res.stderr and "Traceback" not in res.stderr


def test_counts_on_the_command_line_are_whole_and_finite(capsys):
    "`--max-tokens` takes 2e9 or 2_000_000_000; an infinite, fractional or worded count is a one-line error."
    for bad in ("1e400", "inf", "nan", "0.5", "5M", "0"):
        with pytest.raises(SystemExit) as e:
            main(["prepare", "--data", "builtin", "--tokenizer", "t.model", "--out", "o", "--max-tokens", bad])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"'{bad}' is not a positive whole number" in err and "Traceback" not in err
