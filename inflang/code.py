"""A study's own Python code, named as ``module:callable`` (docs/language.md, "Your own code"). Torch-free:
this module finds a callable's source file without importing it, and digests the files a task's result
depends on; ``runners.custom`` imports and calls them.

A module is looked for in the study file's folder first (``folder``; a dotted name as sub-folders), then on
the Python path (installed packages). The digest of a reference is the SHA-256 of the file that defines its
module and of every file its ``code:`` list names (relative to the folder), with their names: editing any of
them changes the hash of every task whose result the code shapes, and nothing else.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

REFERENCE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


class CodeNotFound(LookupError):
    """A reference whose module has no source file where it is looked for."""


def check_reference(value: str) -> str:
    """A pydantic validator's body: 'module:callable' (a dotted module path, one attribute)."""
    if not REFERENCE.match(value):
        raise ValueError(f"'{value}' is not module:callable (e.g. my_nets:gated_mlp)")
    return value


def split(reference: str) -> tuple[str, str]:
    module, _, attribute = reference.partition(":")
    return module, attribute


def locate(reference: str, folder: str | None) -> Path:
    """The source file of the reference's module (``locate_module``). Raises CodeNotFound."""
    return locate_module(split(reference)[0], folder)


def locate_module(module: str, folder: str | None) -> Path:
    """A module's source file: ``folder/a/b.py`` or ``folder/a/b/__init__.py`` for module ``a.b``, else where
    the Python path has it. Raises CodeNotFound."""
    if folder is not None:
        base = Path(folder).joinpath(*module.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate.resolve()
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin in (None, "built-in", "frozen") or not Path(spec.origin).is_file():
        where = f"beside the study ({folder})" if folder else "beside the study"
        raise CodeNotFound(f"module '{module}' not found {where} or on the Python path")
    return Path(spec.origin).resolve()


def digest(reference: str, folder: str | None, extra: list[str] | tuple[str, ...] = ()) -> str:
    """SHA-256 of the module's file and of the ``extra`` files (relative to ``folder``), with their names."""
    h = hashlib.sha256()
    files = [("module", locate(reference, folder))]
    base = Path(folder) if folder is not None else Path.cwd()
    files += [(name, (base / name).resolve()) for name in sorted(extra)]
    for name, path in files:
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def missing_extra(folder: str | None, extra: list[str] | tuple[str, ...]) -> list[str]:
    """The files of a ``code:`` list that do not exist."""
    base = Path(folder) if folder is not None else Path.cwd()
    return [name for name in extra if not (base / name).is_file()]
