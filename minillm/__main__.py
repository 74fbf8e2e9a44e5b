"`python -m minillm ...` is the `minillm` command."
from minillm.cli import console

if __name__ == "__main__":
    console()
