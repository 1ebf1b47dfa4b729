"""``python -m reid COMMAND ...``: the ``reid`` command (see reid.cli)."""

from reid.cli import main

if __name__ == "__main__":
    main()
