"""The terminal's two consoles: results on stdout, messages and progress on stderr."""

from __future__ import annotations

import sys

from rich.console import Console

# Tables of numbers with intervals need room: a terminal gets its own width, a pipe or a log 160 columns.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)
