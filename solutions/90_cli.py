"""Worked solutions to the exercises of nbs/90_cli.ipynb."""
import sys


def parse_count(value):
    "Read it as a float (so 2e9 works) after dropping separators; accept it only when it is a whole number >= 1."
    try:
        n = float(value.replace("_", ""))
    except ValueError:
        raise ValueError(f"{value!r} is not a positive whole number") from None
    if not (n >= 1 and n == int(n)):
        raise ValueError(f"{value!r} is not a positive whole number")
    return int(n)


def run_command(args):
    "Bad input is one line and status 2; a diverged run 3; Ctrl-C 130; anything else is a bug and keeps its traceback."
    from minillm.train import TrainingDiverged

    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"minillm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"minillm {args.command}: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"\nminillm {args.command}: interrupted", file=sys.stderr)
        return 130
