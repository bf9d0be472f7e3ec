"""The code's shape: no import cycle among inflang's and runners' modules (in-function imports counted), and
a runners registry entry for every member of the spec's discriminated unions."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("inflang", "runners"):
        for file in (ROOT / package).rglob("*.py"):
            name = ".".join(file.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = file
    return found


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its file (top level or inside functions). A
    ``from package import submodule`` depends on the submodule; importing a module's own parent package
    (which Python runs first anyway) is not counted."""

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        package = name if file.name == "__init__.py" else name.rpartition(".")[0]
        targets: list[str] = []
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
                targets += subs if len(subs) == len(node.names) else [base, *subs]
        graph[name] = {t for t in map(known, targets) if t and t != name and not name.startswith(t + ".")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_even_through_in_function_imports():
    graph = _imports(_modules())
    assert graph["runners.compiled"] >= {"runners.forward"}  # the graph sees the modules' imports
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _members(union: object, key: str) -> set[str]:
    names = set()
    for member in typing.get_args(union):
        annotation = member.model_fields[key].annotation
        names.update(typing.get_args(annotation) or [member.model_fields[key].default])
    return names


@pytest.mark.parametrize(("union", "key", "registry"), [
    ("inflang.spec.estimators:AnyEstimator", "name", "runners.estimators:ESTIMATORS"),
    ("inflang.spec.protocols:AnyProtocol", "protocol", "runners.protocols:PROTOCOLS"),
    ("inflang.spec.model:AnyModel", "arch", "runners.models:BUILDERS"),
    ("inflang.spec.dataset:AnyDataset", "name", "runners.data:LOADERS"),
])
def test_every_member_of_a_spec_union_has_a_runner(union: str, key: str, registry: str):
    """The language's discriminated unions and the runners' registries name the same things: a spec class
    added without its runner (or a runner without its spec class) fails here, not in a study."""
    import importlib

    def attribute(path: str) -> object:
        module, _, name = path.partition(":")
        return getattr(importlib.import_module(module), name)

    declared = _members(attribute(union), key)
    registered = set(attribute(registry))  # type: ignore[call-overload]
    assert declared == registered


def test_only_an_estimators_own_modules_name_it():
    """An estimator's rules, health checks and runner live with it (its spec class in inflang/spec/estimators.py,
    its module in runners/estimators/), so no other module spells its name. ``exact`` and ``custom`` are left out:
    they are also a Hessian method and a dataset and model."""
    from inflang.spec.estimators import AnyEstimator

    names = _members(AnyEstimator, "name") - {"exact", "custom"}
    spelled = []
    for module, file in _modules().items():
        if module == "inflang.spec.estimators" or module.startswith("runners.estimators"):
            continue
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                spelled.append(f"{module}:{node.lineno} {node.value!r}")
    assert not spelled, spelled
