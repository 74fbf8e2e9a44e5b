import subprocess
import sys

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
