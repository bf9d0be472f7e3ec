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
    ``from package import submodule`` depends on the submodule. Importing ``a.b.c`` runs the packages ``a`` and
    ``a.b`` first, so it depends on them too (not on the importer's own packages, which Python has begun to run
    already); a package's ``__init__`` counts its top-level imports only, its functions' imports being a lazy
    facade (``inflang.load``) that no submodule's import runs."""

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        is_package = file.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(file.read_text())
        nodes = tree.body if is_package else list(ast.walk(tree))
        targets: list[str] = []
        for node in nodes:
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
                targets += subs if len(subs) == len(node.names) else [base, *subs]
        found = {t for t in map(known, targets) if t}
        parents = {".".join(t.split(".")[:i]) for t in found for i in range(1, t.count(".") + 1)}
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        graph[name] = {t for t in found | (parents & set(modules)) if t not in own}
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


def test_the_cycle_finder_finds_one(tmp_path: Path):
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    # a cycle that closes through a package's __init__: importing pkg.helper runs pkg/__init__.py first
    for path, text in {"pkg/__init__.py": "from pkg.writer import W\n", "pkg/writer.py": "from pkg.helper import h\n",
                       "pkg/helper.py": "def h():\n    from pkg.schema import S\n", "pkg/schema.py": "S = 1\n",
                       "other.py": "def f():\n    from pkg.schema import S\n"}.items():
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text(text)
    files = {".".join(Path(p).with_suffix("").parts).removesuffix(".__init__"): tmp_path / p
             for p in ("pkg/__init__.py", "pkg/writer.py", "pkg/helper.py", "pkg/schema.py", "other.py")}
    graph = _imports(files)
    assert graph["other"] == {"pkg.schema", "pkg"} and "pkg" not in graph["pkg.helper"]
    assert _cycle(graph) is None  # the helper's import of pkg.schema runs no package it is not already inside


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
    its module in runners/estimators/), so no other module spells its name or its spec class's. ``exact`` and
    ``custom`` are left out: they are also a Hessian method and a dataset and model. ``inflang.spec`` re-exports
    the built-in classes for short imports; a new estimator need not be added there."""
    from inflang.spec.estimators import AnyEstimator

    names = _members(AnyEstimator, "name") - {"exact", "custom"}
    classes = {member.__name__ for member in typing.get_args(AnyEstimator)} - {"ExactEstimator", "CustomEstimator"}
    spelled = []
    for module, file in _modules().items():
        if module in ("inflang.spec", "inflang.spec.estimators") or module.startswith("runners.estimators"):
            continue
        for node in ast.walk(ast.parse(file.read_text())):
            word = node.id if isinstance(node, ast.Name) else node.name if isinstance(node, ast.alias) else None
            if isinstance(node, ast.Constant) and node.value in names or word in classes:
                spelled.append(f"{module}:{getattr(node, 'lineno', '?')} {word or node.value!r}")
    assert not spelled, spelled


def test_every_metric_a_protocol_stores_is_in_the_catalogue():
    """Protocols name their metrics from the catalogue (inflang/metrics.py), so intervals, claims and the CLI
    know each one's range, direction and label; a name the catalogue does not know fails here."""
    from inflang import metrics
    from inflang.spec.protocols import AnyProtocol
    from inflang.spec.selection import MetricName

    agreement = typing.get_args(MetricName)  # what metrics: names may list, each an estimator's catalogue entry
    assert all(metrics.CATALOGUE[m].of == "estimator" for m in agreement)
    from inflang.results.report import DECOMPOSITION_TERMS, DECOMPOSITION_TOTAL  # the report's gap metrics

    assert {m for m, _ in DECOMPOSITION_TERMS} | {DECOMPOSITION_TOTAL} <= set(
        metrics.gap_metrics("estimator") + metrics.gap_metrics("ground_truth"))
    for member in typing.get_args(AnyProtocol):
        name = typing.get_args(member.model_fields["protocol"].annotation)[0]
        variants = [{"protocol": name, "repeats": 2, "resolution_probes": 2}]
        variants += [{"protocol": name, "decompose": True}] if "decompose" in member.model_fields else []
        for fields in variants:
            spec = member.model_validate(fields)
            stored = spec.estimator_metrics(agreement) + spec.ground_truth_metrics() + spec.summary_metrics
            unknown = [m for m in stored if metrics.metric(m) is None]
            assert not unknown, f"{name}: {unknown}"
            assert all(metrics.belongs_to_estimator(m) for m in spec.estimator_metrics(agreement))
            assert not any(metrics.belongs_to_estimator(m) for m in spec.ground_truth_metrics())
