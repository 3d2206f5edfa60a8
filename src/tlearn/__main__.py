"""`python -m tlearn` is the same CLI as `tlearn`."""

from tlearn.cli import main

if __name__ == "__main__":
    main()
