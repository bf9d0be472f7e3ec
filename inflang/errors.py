"""Errors that a user sees: one line ``FILE:LINE:COL: field.path: message``, plus an optional hint."""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Position:
    """A place in a study file; line and column are 1-based, as editors show them."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a study: where, which field, what, and how to fix it."""

    position: Position
    path: str
    message: str
    hint: str | None = None

    def format(self) -> str:
        """``FILE:LINE:COL: path: message`` on one line (control characters escaped), then the hint."""
        where = f"{self.position}: {_printable(self.path)}: " if self.path else f"{self.position}: "
        text = where + _printable(self.message)
        if self.hint:
            text += f"\n  hint: {_printable(self.hint)}"
        return text


def _printable(text: str) -> str:
    """Escape control characters (a user's value may hold a newline) so a problem stays on one line."""
    return "".join(repr(c)[1:-1] if unicodedata.category(c)[0] == "C" else c for c in text)


class StudyError(Exception):
    """A study that cannot be loaded, validated or compiled; carries every problem found."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(p.format() for p in self.problems))

    @classmethod
    def at(cls, position: Position, path: str, message: str, hint: str | None = None) -> StudyError:
        return cls([Problem(position, path, message, hint)])


class CodeProblem(Exception):
    """The study's own code (``module:callable``) failed a check when it was imported or called to learn its
    sizes: at ``path`` in the study (e.g. ("dataset", "loader")), with a one-line message."""

    def __init__(self, path: tuple[str | int, ...], message: str, hint: str | None = None) -> None:
        self.path, self.message, self.hint = path, message, hint
        super().__init__(message)


class UsageError(Exception):
    """Bad command-line input that is not a study file (a database path, a query); exit code 2."""


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean' suggestion for a misspelt key or value, or None."""
    matches = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"did you mean '{matches[0]}'?" if matches else None


class StorageError(Exception):
    """A finished task's results could not be written (a full disk, a folder that went away): the run stops,
    exit 1; what was written before stays consistent and the same command resumes."""
