"""A study compiled into a plan: content-addressed tasks with dependencies.

Task kinds, and what each one's hash covers (besides ``TASK_FORMAT``):
- ``train``: dataset (its fields but ``root``, and for file datasets a digest of the files' names, sizes
  and contents: ``inflang.compiling.datadigest``), model, training, the cell's seed (and a replica number for the
  extra models an estimator such as ``trak`` averages over); for the study's own loader or factory the digest
  of its code (``inflang.code``) instead of its ``folder`` -> trained parameters, split, losses;
- ``curvature``: train -> eigendecomposition of the objective's Hessian (shared by every damping value);
- ``hessian``: curvature, ``hessian:`` -> top and minimum eigenvalues, trace;
- ``diagnose``: train, the curvature settings of ``diagnostics:`` -> the trained objective's gradient norm,
  its Hessian's extreme eigenvalues (Lanczos) and trace (Hutchinson): what the health checks read;
- ``estimate``: train (+ curvature), the estimator's fields (not its label; for a custom scorer its code's
  digest, not its folder), test_points, measure -> scores;
- ``ground_truth``: train, ``ground_truth`` (with each ranking's ``by`` replaced by that estimate task's
  hash), test_points, and the estimate tasks whose rankings it follows (and ``ceiling_items: resolved``
  under ``metrics: {resolved_only: true}``) -> actual effects;
- ``metrics``: estimate, ground_truth, metrics, the cell's seed (it seeds the bootstrap's item draws) ->
  correlations and their bootstrap replicates.
Two cells that train the same model share one ``train`` task; changing one estimator's damping changes
only that estimator's ``estimate`` and ``metrics`` tasks (and a ground truth whose removals it ranks).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from inflang.code import digest as code_digest
from inflang.compiling.cost import ITEMSIZE, chunk_bounds, member_bytes, models_per_chunk
from inflang.compiling.datadigest import DigestCache, dataset_digest
from inflang.compiling.hashing import canonical_hash
from inflang.compiling.validate import Cell, LoadedStudy
from inflang.spec import CustomDataset, CustomEstimator, CustomModel, estimator_label
from inflang.spec.study import study_facts

TASK_FORMAT = 3
KINDS = ("train", "curvature", "hessian", "diagnose", "estimate", "ground_truth", "metrics")


@dataclass(frozen=True)
class Task:
    kind: str
    hash: str
    inputs: dict[str, Any]
    deps: tuple[str, ...]
    cost_steps: int = 0  # model-steps of training this task performs (its share of the run's cost)
    models: int = 0  # models it trains
    member_bytes: int = 0  # memory of one ensemble member (retraining tasks)
    chunk: int | None = None  # models per ensemble chunk fixed by the study (ground_truth.batch)
    repeats: int = 1
    probes: int = 0  # resolution probes per repeat
    items: int = 0  # removals, groups or subsets retrained per repeat
    flops: float = 0.0  # matmul and convolution FLOPs of its training (6 batch multiply_adds per model-step)
    workload: dict[str, Any] | None = None  # what one of its training steps computes, for pricing (pricing.py)

    def _chunk_sizes(self, budget: int | None) -> list[int]:
        """Models in each ensemble of one repeat under ``budget`` (removals, their control and any probes;
        ``inflang.compiling.cost.chunk_bounds``); empty for a task that retrains nothing."""
        if not self.models or not self.member_bytes:
            return []
        size = self.chunk or models_per_chunk(self.member_bytes, budget)
        return [hi - lo + 1 + p for lo, hi, p in chunk_bounds(self.items, size, self.probes)]

    def typical_chunk(self, budget: int | None = None) -> int:
        """The ensemble size most of its chunks have (ties: the larger; 1 for a train task): what pricing
        calibrates at and decides ``auto`` by (a short last chunk or the probes' own chunk can differ)."""
        sizes = self._chunk_sizes(budget)
        return max(set(sizes), key=lambda s: (sizes.count(s), s)) if sizes else 1

    def ensemble_sizes(self, budget: int | None = None) -> int:
        """Distinct ensemble sizes among its chunks (at least 1): the compiled engine compiles once per size, in
        the one process that runs the task."""
        return max(1, len(set(self._chunk_sizes(budget))))

    def model_steps(self, budget: int | None = None) -> int:
        """Model-steps it trains under ``budget``: ``cost_steps`` counts one control per repeat, but every
        ensemble chunk carries a control of its own, so a task split into k chunks per repeat trains k - 1
        more controls per repeat than that."""
        sizes = self._chunk_sizes(budget)
        if not self.cost_steps or not sizes:
            return self.cost_steps
        return self.cost_steps // (self.items + 1 + self.probes) * sum(sizes)

    def trained_models(self, budget: int | None = None) -> int:
        """Models it trains under ``budget``, a control per chunk counted (see ``model_steps``)."""
        sizes = self._chunk_sizes(budget)
        if not self.cost_steps or not sizes:
            return self.models
        return self.models + self.repeats * (sum(sizes) - (self.items + 1 + self.probes))

    def model_flops(self, budget: int | None = None) -> float:
        """FLOPs of the model-steps it trains under ``budget``."""
        return self.flops * self.model_steps(budget) / self.cost_steps if self.cost_steps else self.flops

    def chunks(self, budget: int | None = None) -> int:
        """How many ensembles this task trains (each chunk also carries one control model)."""
        return self.repeats * len(self._chunk_sizes(budget))


@dataclass
class CellTasks:
    """The tasks one cell reads its results from; estimator tasks keyed by the estimator's label."""

    cell: Cell
    train: str
    curvature: dict[str, str]  # curvature kind (hessian, ggn) -> task
    hessian: str | None
    diagnose: str | None = None  # the trained model's gradient norm and curvature (health checks)
    replicas: list[str] = field(default_factory=list)  # extra independently trained models (trak's models: M)
    estimates: dict[str, str] = field(default_factory=dict)
    ground_truth: str | None = None
    metrics: dict[str, str] = field(default_factory=dict)

    def all(self) -> list[tuple[str, str | None, str]]:
        """(kind, estimator label or None, task hash) for every task of the cell."""
        out: list[tuple[str, str | None, str]] = [("train", None, self.train)]
        out += [("replica", None, h) for h in self.replicas]
        out += [("curvature", None, h) for h in self.curvature.values()]
        if self.hessian:
            out.append(("hessian", None, self.hessian))
        if self.diagnose:
            out.append(("diagnose", None, self.diagnose))
        out += [("estimate", label, h) for label, h in self.estimates.items()]
        if self.ground_truth:
            out.append(("ground_truth", None, self.ground_truth))
        out += [("metrics", label, h) for label, h in self.metrics.items()]
        return out


@dataclass
class Plan:
    study: LoadedStudy
    tasks: dict[str, Task]  # in dependency order
    cells: list[CellTasks]
    selected: frozenset[str] | None = None  # cell ids to work on (``--select``); None: every cell

    def select(self, cell_ids: set[str] | None) -> Plan:
        """The same plan, working on these cells only (every cell is still registered when it runs)."""
        return replace(self, selected=None if cell_ids is None else frozenset(cell_ids))

    def selected_cells(self) -> list[CellTasks]:
        return [c for c in self.cells if self.selected is None or c.cell.cell_id in self.selected]

    def selected_tasks(self) -> dict[str, Task]:
        """The tasks the selected cells need, their dependencies included, in dependency order."""
        if self.selected is None:
            return self.tasks
        needed: set[str] = set()
        stack = [h for c in self.selected_cells() for _, _, h in c.all()]
        while stack:
            h = stack.pop()
            if h not in needed:
                needed.add(h)
                stack.extend(self.tasks[h].deps)
        return {h: t for h, t in self.tasks.items() if h in needed}

    def by_kind(self) -> dict[str, list[Task]]:
        """The selected tasks by kind."""
        out: dict[str, list[Task]] = {k: [] for k in KINDS}
        for task in self.selected_tasks().values():
            out[task.kind].append(task)
        return out


def _dump(model: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    data: dict[str, Any] = model.model_dump(mode="json")
    for key in drop:
        data.pop(key, None)
    return data


def _put(data: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    """Set the value at ``path`` (keys and list positions) of nested data."""
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


class _Builder:
    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}

    def add(self, kind: str, inputs: dict[str, Any], deps: tuple[str, ...], cost: int = 0, models: int = 0,
            hashed: dict[str, Any] | None = None, **extra: Any) -> str:
        """A task whose hash covers ``hashed`` (default: its inputs) and whose runner receives ``inputs``."""
        body = {"kind": kind, "format": TASK_FORMAT, **inputs}
        digest = canonical_hash({"kind": kind, "format": TASK_FORMAT, **(inputs if hashed is None else hashed)}, 20)
        if digest not in self.tasks:
            self.tasks[digest] = Task(kind, digest, body, deps, cost, models, **extra)
        return digest


def compile_study(loaded: LoadedStudy) -> Plan:
    """Every cell's tasks, deduplicated by hash, in an order where dependencies come first."""
    b = _Builder()
    cells: list[CellTasks] = []
    cache = DigestCache()
    digests: dict[str, str | None] = {}
    for cell in loaded.cells:
        s = cell.study
        n_train = s.training.trained_on(s.dataset.split_sizes()[0])
        train_steps = s.training.total_steps(n_train)
        # where files come from (download, mirror) does not change the data, so it is not part of the hash
        train_inputs: dict[str, Any] = {"dataset": _dump(s.dataset, ("download", "mirror")),
                                        "model": _dump(s.model), "training": _dump(s.training), "seed": cell.seed}
        if s.test_points.select == "indices" and s.test_points.indices:
            train_inputs["held_out"] = sorted(set(s.test_points.indices))  # named test points are never trained on
        # the hash covers what the data is (files, sizes, contents), not where it lies
        data_key = s.dataset.model_dump_json()
        if data_key not in digests:
            digests[data_key] = dataset_digest(s.dataset, cache)
        # where data and code lie is not part of a hash; what the code is, is
        train_hashed = {**train_inputs, "dataset": _dump(s.dataset, ("download", "mirror", "root", "folder")),
                        "model": _dump(s.model, ("folder",))}
        if digests[data_key] is not None:
            train_hashed["data"] = digests[data_key]
        if isinstance(s.dataset, CustomDataset):
            train_hashed["data_code"] = code_digest(s.dataset.loader, s.dataset.folder, s.dataset.code)
        if isinstance(s.model, CustomModel):
            train_hashed["model_code"] = code_digest(s.model.factory, s.model.folder, s.model.code)
        info = s.dataset.info()
        batch = min(s.training.batch_size or n_train, n_train)
        step_flops = 6 * batch * s.model.multiply_adds(info)
        workload = {"model": _dump(s.model), "shape": list(info.shape) if info.shape else None,
                    "features": info.features, "classes": info.classes, "regression": info.regression,
                    "dtype": s.training.dtype, "batch": batch}
        if isinstance(s.model, CustomModel):  # the probed module's facts, which its dump leaves out, and what its
            workload["facts"] = s.model.engine_facts()  # code is: a rate measured before an edit is not reused
            workload["code"] = train_hashed["model_code"]
        train = b.add("train", train_inputs, (), train_steps, 1, hashed=train_hashed, flops=train_steps * step_flops,
                      workload={**workload, "steps": train_steps, "engine": "eager"})
        exact_diagnostics = s.hessian is not None and s.hessian.method == "exact"
        kinds = {e.curvature_kind for e in s.estimators if e.curvature_kind} | ({"hessian"} if exact_diagnostics
                                                                               else set())
        curvature = {k: b.add("curvature", {"train": train, "curvature": k}, (train,)) for k in sorted(kinds)}
        hessian = None
        if s.hessian is not None and exact_diagnostics:
            hessian = b.add("hessian", {"curvature": curvature["hessian"], "hessian": _dump(s.hessian)},
                            (curvature["hessian"],))
        elif s.hessian is not None:
            hessian = b.add("hessian", {"train": train, "hessian": _dump(s.hessian)}, (train,))
        diagnose = None
        if s.diagnostics.curvature:
            diagnose = b.add("diagnose", {"train": train, "diagnostics": _dump(s.diagnostics.curvature_settings())},
                             (train,))
        ct = CellTasks(cell=cell, train=train, curvature=curvature, hessian=hessian, diagnose=diagnose)
        gt = s.ground_truth
        for est in s.estimators:
            reads = curvature[est.curvature_kind] if est.curvature_kind else None
            replicas = [b.add("train", {**train_inputs, "replica": r}, (), train_steps, 1,
                              hashed={**train_hashed, "replica": r}, flops=train_steps * step_flops,
                              workload={**workload, "steps": train_steps, "engine": "eager"})
                        for r in range(1, est.trained_models)]
            ct.replicas += [h for h in replicas if h not in ct.replicas]
            estimate_inputs: dict[str, Any] = {"train": train, "curvature": reads,
                                               "estimator": _dump(est, ("label",)),
                                               "test_points": _dump(s.test_points), "measure": gt.measure}
            if replicas:
                estimate_inputs["replicas"] = replicas
            estimate_hashed = None
            if isinstance(est, CustomEstimator):  # the scorer's code, not where it lies
                estimate_hashed = {**estimate_inputs, "estimator": _dump(est, ("label", "folder")),
                                   "estimator_code": code_digest(est.scorer, est.folder, est.code)}
            ct.estimates[estimator_label(est)] = b.add(
                "estimate", estimate_inputs, (train, *([reads] if reads else []), *replicas), hashed=estimate_hashed)
        facts = study_facts(s)
        # the rankings the protocol follows are estimate tasks: dependencies whose hashes stand where the file
        # names their labels, so the hash covers what ranks, not what it is called; ``rankings`` lists them
        # in a canonical (sorted) order, which the protocol's own order refers to
        followed = [(r.where, ct.estimates[r.label]) for r in gt.rankings(facts.labels) if r.label is not None]
        gt_dump = _dump(gt)
        for where, estimate in followed:
            if where[1:]:
                _put(gt_dump, where[1:], estimate)
        rankings = sorted({estimate for _, estimate in followed})
        gt_inputs: dict[str, Any] = {"train": train, "ground_truth": gt_dump, "test_points": _dump(s.test_points)}
        if rankings:
            gt_inputs["rankings"] = rankings
        probes = gt.probes_per_repeat
        if s.metrics.resolved_only and gt.repeats >= 2 and probes:
            gt_inputs["ceiling_items"] = "resolved"  # the noise ceiling on the items the metrics score
        gt_deps: tuple[str, ...] = (train, *rankings)
        items = gt.items(facts)
        retrained = (items + 1 + probes) * gt.repeats
        models = retrained + gt.extra_models(facts)
        # Newton refits take no optimizer steps: they are priced per refit (``inflang.compiling.pricing``), not as steps
        retrain_steps = 0 if gt.converged else gt.retrain_steps(train_steps)
        newton = retrained if gt.converged else gt.extra_models(facts)
        member = member_bytes(s.model.n_params(info), s.model.activations_per_example(info),
                              s.training.batch_size or n_train, ITEMSIZE[s.training.dtype])
        gt_workload: dict[str, Any] | None = None
        if retrain_steps or newton:
            gt_workload = {**workload, "steps": retrain_steps, "newton_refits": newton, "n_train": n_train}
            if gt.converged:  # refits of another objective are priced by their own measured rate
                gt_workload.update(gt.refit_workload() or {})
        ct.ground_truth = b.add("ground_truth", gt_inputs, gt_deps, retrain_steps * retrained, models,
                                member_bytes=member, chunk=gt.batch if isinstance(gt.batch, int) else None,
                                repeats=gt.repeats, probes=probes, items=items,
                                flops=retrain_steps * retrained * step_flops, workload=gt_workload)
        for label, estimate in ct.estimates.items():
            ct.metrics[label] = b.add("metrics", {"estimate": estimate, "ground_truth": ct.ground_truth,
                                                  "metrics": _dump(s.metrics), "seed": cell.seed},
                                      (estimate, ct.ground_truth))
        cells.append(ct)
    cache.save()
    order = {k: i for i, k in enumerate(KINDS)}
    ordered = dict(sorted(b.tasks.items(), key=lambda kv: order[kv[1].kind]))
    return Plan(study=loaded, tasks=ordered, cells=cells)
