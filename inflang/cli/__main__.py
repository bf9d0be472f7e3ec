"""``python -m inflang.cli``: the command line, as the ``inflang`` script runs it."""

from inflang.cli.commands import main

if __name__ == "__main__":
    main()
