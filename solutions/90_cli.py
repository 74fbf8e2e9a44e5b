"""Worked solutions to the exercises of nbs/90_cli.ipynb."""


def parse_count(value):
    "Read it as a float (so 2e9 works) after dropping separators; accept it only when it is a whole number >= 1."
    try:
        n = float(value.replace("_", ""))
    except ValueError:
        raise ValueError(f"{value!r} is not a positive whole number") from None
    if not (n >= 1 and n == int(n)):
        raise ValueError(f"{value!r} is not a positive whole number")
    return int(n)
