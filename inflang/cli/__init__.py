"""The command line (``inflang``): the Typer commands (commands.py) and what they print (tables, progress,
terminal, examples, starter)."""

from inflang.cli.commands import app, main

__all__ = ["app", "main"]
