"""Sweeps: dotted paths to lists of values -> cells.

``sweep: {model.depth: [1, 2], training.weight_decay: [0, 0.001]}`` is a cartesian product (4 cells);
a list of such maps is the union of their products (duplicates dropped, first occurrence kept).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

from inflang.compiling.reader import Document, PathKey
from inflang.errors import Problem, StudyError

Params = dict[str, Any]


@dataclass(frozen=True)
class SweepEntry:
    """One swept value, and where the sweep gave it (for errors in the cell it produces)."""

    path: str
    value: Any
    source: PathKey  # path of the value inside the document, e.g. ("sweep", "model.depth", 2)


def split_path(dotted: str) -> tuple[str | int, ...]:
    """'estimators.0.damping' -> ('estimators', 0, 'damping')."""
    return tuple(int(p) if p.isdigit() else p for p in dotted.split("."))


def grids(doc: Document) -> list[list[list[SweepEntry]]]:
    """The sweep as grids: each grid is a list of axes, each axis the entries of one dotted path."""
    sweep = doc.data.get("sweep")
    if sweep is None:
        return []
    raw: list[tuple[Any, PathKey]] | None = [(sweep, ("sweep",))] if isinstance(sweep, dict) else None
    if isinstance(sweep, list):
        raw = [(g, ("sweep", i)) for i, g in enumerate(sweep)]
    if raw is None:
        raise StudyError.at(doc.position(("sweep",), value=True), "sweep",
                            "must be a map of dotted paths to lists, or a list of such maps")
    if not raw:
        raise StudyError.at(doc.position(("sweep",), value=True), "sweep", "is empty",
                            "remove 'sweep:' or give it at least one path")
    problems: list[Problem] = []
    out: list[list[list[SweepEntry]]] = []
    for grid, where in raw:
        if not isinstance(grid, dict):
            problems.append(Problem(doc.position(where, value=True), _dotted(where),
                                    "each item of a sweep list must be a map of dotted paths to lists"))
            continue
        if not grid:
            problems.append(Problem(doc.position(where, value=True), _dotted(where), "is empty"))
            continue
        axes: list[list[SweepEntry]] = []
        for path, values in grid.items():
            at = where + (path,)
            if path in ("sweep", "extends", "study", "claims", "claims_adjust") or path.startswith(
                    ("sweep.", "study.", "claims.")):
                problems.append(Problem(doc.position(at), _dotted(at), f"'{path}' cannot be swept"))
                continue
            if not isinstance(values, list):
                problems.append(Problem(doc.position(at, value=True), _dotted(at),
                                        f"must be a list of values, e.g. [{values!r}]"))
                continue
            if not values:
                problems.append(Problem(doc.position(at, value=True), _dotted(at), "has no values"))
                continue
            axes.append([SweepEntry(path, v, at + (i,)) for i, v in enumerate(values)])
        out.append(axes)
    if problems:
        raise StudyError(problems)
    return out


def expand(doc: Document) -> list[tuple[Params, list[SweepEntry]]]:
    """Every cell of the sweep as (params by dotted path, the entries that set them); one empty cell if none."""
    cells: list[tuple[Params, list[SweepEntry]]] = []
    seen: set[str] = set()
    all_grids = grids(doc)
    if not all_grids:
        return [({}, [])]
    for axes in all_grids:
        for combo in itertools.product(*axes):
            params = {e.path: e.value for e in combo}
            key = repr(sorted(params.items(), key=lambda kv: kv[0]))
            if key not in seen:
                seen.add(key)
                cells.append((params, list(combo)))
    return cells


def apply(data: dict[str, Any], params: Params) -> dict[str, Any]:
    """A copy of ``data`` with each dotted path set to its value (maps are created along the way)."""
    out = copy.deepcopy(data)
    out.pop("sweep", None)
    for dotted, value in params.items():
        node: Any = out
        parts = split_path(dotted)
        for part in parts[:-1]:
            if isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            elif isinstance(node, dict):
                node = node.setdefault(part, {}) if not isinstance(node.get(part), (dict, list)) else node[part]
            else:
                raise KeyError(dotted)
        last = parts[-1]
        if isinstance(node, list):
            if not isinstance(last, int) or last >= len(node):
                raise KeyError(dotted)
            node[last] = copy.deepcopy(value)
        elif isinstance(node, dict):
            node[last] = copy.deepcopy(value)
        else:
            raise KeyError(dotted)
    return out


def _dotted(path: PathKey) -> str:
    return ".".join(str(p) for p in path)


def _value(value: Any) -> str:
    """A swept value as it reads in YAML flow style: {a: 1, b: 2}, [1, 2], null."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return "null" if value is None else str(value)


def label(params: Params, empty: str = "-") -> str:
    """Swept values by the last part of their path (the whole path where two would read alike)."""
    short = [k.rsplit(".", 1)[-1] for k in params]
    names = [s if short.count(s) == 1 else k for s, k in zip(short, params, strict=True)]
    return ", ".join(f"{n}={_value(v)}" for n, v in zip(names, params.values(), strict=True)) or empty


def seeds_by_points(seeds: int | None, test_points: int | None) -> str:
    """What a pooled number rests on, as the terminal and the HTML report print it: seeds x test points per
    seed (``test_points`` counts them over all seeds), '-' without seeds."""
    if not seeds:
        return "-"
    return f"{seeds} x {round((test_points or 0) / seeds)}"
