"""``--select EXPR``: which cells of a study a command works on, as dbt's ``--select`` picks models.

An expression is either a cell id prefix (``3fa2``) or comma-separated conditions on swept values that must
all hold (``model.depth=3``, ``training.weight_decay=0.001,model.depth=2``). A path may be written in full
or by its last part when that is unambiguous (``depth=3``); values are read as YAML (``0.001``, ``top_k``,
``null``, ``{validation: 0.2}``). Several expressions select the union of their cells. An expression that
matches no cell is an error that lists the axes and their values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import yaml

from inflang.compiling.sweep import Params, _value
from inflang.errors import UsageError


def _axes(params: Sequence[Params]) -> dict[str, list[Any]]:
    axes: dict[str, list[Any]] = {}
    for p in params:
        for k, v in p.items():
            if v not in axes.setdefault(k, []):
                axes[k].append(v)
    return axes


def _describe(axes: dict[str, list[Any]]) -> str:
    if not axes:
        return "the study has no sweep, so its only cell is selected by its id"
    return "; ".join(f"{k} in {', '.join(_value(v) for v in values)}" for k, values in axes.items())


def _resolve(path: str, axes: dict[str, list[Any]], expression: str) -> str:
    if path in axes:
        return path
    matches = [k for k in axes if k.rsplit(".", 1)[-1] == path or k.endswith("." + path)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UsageError(f"--select '{expression}': '{path}' could be {' or '.join(matches)}; write the full path")
    raise UsageError(f"--select '{expression}': '{path}' is not swept in this study; axes: {_describe(axes)}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _terms(text: str) -> list[str]:
    """The comma-separated conditions of an expression; commas inside [...] or {...} (a YAML flow value such
    as model={arch: vgg, depth: 11}) belong to the value."""
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    return [*terms, text[start:]]


def matching(expression: str, cells: Sequence[tuple[str, Params]]) -> set[str]:
    """The ids of the cells (id, swept values) an expression selects; raises UsageError if none."""
    text = expression.strip()
    if not text:
        raise UsageError("--select: an empty expression selects nothing")
    axes = _axes([p for _, p in cells])
    if "=" not in text:
        chosen = {cell_id for cell_id, _ in cells if cell_id.startswith(text)}
        if not chosen:
            raise UsageError(f"--select '{text}': no cell id starts with it, and it is not path=value; "
                             f"axes: {_describe(axes)}")
        return chosen
    conditions: list[tuple[str, Any]] = []
    for term in _terms(text):
        if "=" not in term:
            raise UsageError(f"--select '{text}': '{term.strip()}' is not path=value")
        path, _, raw = term.partition("=")
        try:
            value = yaml.safe_load(raw.strip()) if raw.strip() else None
        except yaml.YAMLError:
            value = raw.strip()
        conditions.append((_resolve(path.strip(), axes, text), value))
    chosen = {cell_id for cell_id, p in cells if all(k in p and _same(p[k], v) for k, v in conditions)}
    if not chosen:
        raise UsageError(f"--select '{text}': no cell has these values; axes: {_describe(axes)}")
    return chosen


def select(expressions: Sequence[str] | None, cells: Sequence[tuple[str, Params]]) -> set[str] | None:
    """The union of the expressions' cells; None (every cell) without expressions."""
    if not expressions:
        return None
    chosen: set[str] = set()
    for expression in expressions:
        chosen |= matching(expression, cells)
    return chosen
