"""What each task kind computes: a task's inputs and its dependencies' artifacts -> arrays and rows.

Workers run these functions; they do no I/O of their own (the executor loads and saves artifacts and
hands rows to the store), so a task runs the same on the local executor or elsewhere.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import TypeAdapter
from torch import Tensor, nn
from torch.func import functional_call

from inflang.code import digest as code_digest
from inflang.compiling.hashing import derive_seed
from inflang.spec import (
    AnyDataset,
    AnyEstimator,
    AnyModel,
    AnyProtocol,
    CurvatureSettings,
    CustomDataset,
    CustomEstimator,
    DatasetSpec,
    EstimatorSpec,
    GroundTruthSpec,
    HessianSpec,
    MetricsSpec,
    ModelSpec,
    TestPointSpec,
    TrainingSpec,
)
from runners import data as datasets
from runners import models
from runners.curvature import CURVATURES, Spectrum, hutchinson_trace, lanczos_extremes, spectrum
from runners.device import generator as seeded_generator
from runners.device import here
from runners.ensemble import activations_per_example
from runners.errors import TaskFailure
from runners.estimators import ESTIMATORS, EstimatorInputs
from runners.estimators.common import GRADIENT_BYTES, hessian_vector_products
from runners.metrics import MetricRow, gap_rows, noise_ceiling, resolution_rows
from runners.objective import PARAM_CHANGE, FlatModel, correct, per_example_loss
from runners.outputs import Checkpoint, Curvature, Estimate, HessianDiagnostics, MeasuredEffects, TrainedModel
from runners.polish import polish
from runners.protocols import PROTOCOLS, Problem, RetrainSetup, Scoring
from runners.selection import select_test_points
from runners.train import Trained, train

Arrays = dict[str, Tensor]
Progress = Callable[[int], None]


@dataclass
class Output:
    arrays: Arrays
    rows: dict[str, dict[str, list[Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Dep:
    """A finished dependency: its task inputs and its artifact."""

    inputs: dict[str, Any]
    arrays: Arrays


@dataclass
class Context:
    """Per-run settings the plan does not fix (they never change a result, only how it is computed)."""

    memory_budget: int | None = None
    progress: Progress | None = None
    device: str = "cpu"  # where tasks compute (runners.device.resolve); artifacts always come back on the CPU


_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class TrainSetup:
    """Everything a train task's inputs define: specs, data split and the (untrained) module."""

    dataset: AnyDataset
    model: AnyModel
    training: TrainingSpec
    seed: int
    data: datasets.Prepared
    module: nn.Module
    replica: int = 0  # > 0: another independently trained model on the same split (estimators with models: M)

    @property
    def order_seed(self) -> int:
        return derive_seed(self.seed, "order", *(("replica", self.replica) if self.replica else ()))

    @property
    def noise_seed(self) -> int:
        """Seeds training's dropout masks; scratch retraining's first repeat replays them."""
        return derive_seed(self.seed, "dropout", *(("replica", self.replica) if self.replica else ()))


@functools.lru_cache(maxsize=8)
def _raw(dataset_json: str, code: str | None = None) -> datasets.RawData:
    """A dataset's rows, cached per process by its fields (and for a study's own loader by its code's digest,
    so an edited loader is called again)."""
    return datasets.load_raw(TypeAdapter(DatasetSpec).validate_json(dataset_json))


def setup_from(train_inputs: dict[str, Any]) -> TrainSetup:
    dataset: AnyDataset = TypeAdapter(DatasetSpec).validate_python(train_inputs["dataset"])
    model: AnyModel = TypeAdapter(ModelSpec).validate_python(train_inputs["model"])
    training = TrainingSpec.model_validate(train_inputs["training"])
    seed = int(train_inputs["seed"])
    dtype = _DTYPES[training.dtype]
    code = code_digest(dataset.loader, dataset.folder, dataset.code) if isinstance(dataset, CustomDataset) else None
    data = datasets.prepare(dataset, _raw(dataset.model_dump_json(), code), derive_seed(seed, "split"), dtype,
                            tuple(train_inputs.get("held_out", ())), training.early_stopping)
    replica = int(train_inputs.get("replica", 0))
    init_seed = derive_seed(seed, "init", *(("replica", replica) if replica else ()))
    module = models.build(model, data.input_shape, data.classes, init_seed, dtype)
    return TrainSetup(dataset, model, training, seed, data, module, replica)


def trained_setup(trained: Dep) -> tuple[TrainSetup, TrainedModel]:
    """The setup of a train task with its module holding the trained running statistics (BatchNorm), which
    every evaluation-mode forward pass (estimators, curvature, measurements) uses, and the trained model."""
    s = setup_from(trained.inputs)
    model = TrainedModel.from_arrays(trained.arrays)
    with torch.no_grad():
        for k, b in s.module.named_buffers():
            b.copy_(model.buffers[k])
    return s, model


def _test_losses(module: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor
                 ) -> tuple[Tensor, Tensor | None]:
    """Losses and whether each point is classified correctly (None for regression)."""
    with torch.no_grad():
        logits = functional_call(module, params, (x,))
    return per_example_loss(logits, y), correct(logits, y)


def _flags(values: Tensor | None, count: int) -> list[bool | None]:
    return [None] * count if values is None else [bool(v) for v in values.tolist()]


def run_train(inputs: dict[str, Any], deps: dict[str, Dep], ctx: Context) -> Output:
    s = setup_from(inputs)
    d = s.data
    result = train(s.module, d.x_train, d.y_train, s.training, s.order_seed, d.validation, s.noise_seed)
    polished: dict[str, list[Any]] = {k: [None] for k in POLISH_COLUMNS}
    if s.training.polish is not None:
        polished = _polish(s, result, ctx.memory_budget)
    with torch.no_grad():
        train_losses, train_correct = _test_losses(s.module, result.params, d.x_train, d.y_train)
        test_losses, test_correct = _test_losses(s.module, result.params, d.x_test, d.y_test)
    checkpoints = [Checkpoint(lr, snapshot, buffers) for (lr, snapshot), buffers
                   in zip(result.snapshots, result.snapshot_buffers or [{}] * len(result.snapshots), strict=True)]
    arrays = TrainedModel(result.params, result.init, result.buffers, result.init_buffers, checkpoints).to_arrays()
    n_params = sum(v.numel() for v in result.params.values())
    ids = [int(i) for i in d.train_ids] + [int(i) for i in d.test_ids] + [int(i) for i in d.val_ids]
    roles = ["train"] * len(d.train_ids) + ["test"] * len(d.test_ids) + ["validation"] * len(d.val_ids)
    val_losses, val_correct = (_test_losses(s.module, result.params, *d.validation) if d.validation
                               else (torch.zeros(0), torch.zeros(0, dtype=torch.bool)))
    accuracy = None if test_correct is None else float(test_correct.double().mean())
    return Output(arrays, {
        "train_results": {"n_params": [n_params], "n_train": [d.n_train], "n_test": [len(d.test_ids)],
                          "train_loss": [float(train_losses.mean())], "test_loss": [float(test_losses.mean())],
                          "test_accuracy": [accuracy], "train_seconds": [result.seconds],
                          "steps": [result.steps], **polished},
        "split_rows": {"index": ids, "role": roles,
                       "label_flipped": [bool(f) for f in d.flipped] + [False] * (len(d.test_ids) + len(d.val_ids)),
                       "loss": train_losses.tolist() + test_losses.tolist() + val_losses.tolist(),
                       "correct": _flags(train_correct, d.n_train) + _flags(test_correct, len(d.test_ids))
                       + _flags(val_correct, len(d.val_ids))},
    })


def _rows_in_budget(s: TrainSetup, budget: int | None) -> int:
    """Training points a full-batch pass takes at a time: as many as keep three copies of their activations
    within ``budget`` (default GRADIENT_BYTES; a large network's full batch need not fit)."""
    per_example = 3 * max(1, activations_per_example(s.module, s.data.input_shape)) * s.data.x_train.element_size()
    return max(1, (budget or GRADIENT_BYTES) // per_example)


POLISH_COLUMNS = ("polish_steps", "polish_start_grad_norm", "polish_grad_norm", "polish_converged",
                  "polish_accuracy_change", "polish_seconds")


def _polish(s: TrainSetup, result: Trained, budget: int | None) -> dict[str, list[Any]]:
    """``training.polish`` on the trained module (``runners.polish``), in place, over chunks of training points
    whose activations fit the memory budget; ``result.params`` follow it, and so does the last checkpoint (the
    trained model, for tracin). The rows: its iterations, the gradient norm before and after, whether it
    reached the tolerance, the change in test accuracy, its seconds."""
    spec, d = s.training.polish, s.data
    assert spec is not None
    began = time.perf_counter()
    with torch.no_grad():
        before = _test_losses(s.module, result.params, d.x_test, d.y_test)[1]
    done = polish(s.module, d.x_train, d.y_train, s.training.weight_decay, spec.tolerance(s.training.dtype),
                  spec.max_steps, s.training.label_smoothing, _rows_in_budget(s, budget))
    result.params = {k: v.detach().clone() for k, v in s.module.named_parameters()}
    if result.snapshots:
        result.snapshots[-1] = (result.snapshots[-1][0], {k: v.clone() for k, v in result.params.items()})
    with torch.no_grad():
        after = _test_losses(s.module, result.params, d.x_test, d.y_test)[1]
    change = None if before is None or after is None else float(after.double().mean() - before.double().mean())
    return {"polish_steps": [done.steps], "polish_start_grad_norm": [done.start_grad_norm],
            "polish_grad_norm": [done.grad_norm], "polish_converged": [done.converged],
            "polish_accuracy_change": [change], "polish_seconds": [time.perf_counter() - began]}


def run_curvature(inputs: dict[str, Any], deps: dict[str, Dep], ctx: Context) -> Output:
    s, model = trained_setup(deps[inputs["train"]])
    H = CURVATURES[inputs["curvature"]](s.module, model.params, s.data.x_train, s.data.y_train,
                                        s.training.weight_decay, s.training.label_smoothing)
    spec = spectrum(H)
    values = spec.values
    return Output(Curvature(values, spec.vectors).to_arrays(), {"curvature_results": {
        "n_params": [int(values.numel())], "max_eigenvalue": [float(values[-1])],
        "min_eigenvalue": [float(values[0])], "n_negative": [int((values < 0).sum())],
        "trace": [float(values.sum())]}})


def run_hessian(inputs: dict[str, Any], deps: dict[str, Dep], ctx: Context) -> Output:
    spec = HessianSpec.model_validate(inputs["hessian"])
    if spec.method == "exact":
        values = Curvature.from_arrays(deps[inputs["curvature"]].arrays).values
        trace, negative = float(values.sum()), int((values < 0).sum())
    else:  # Lanczos Ritz values and a Hutchinson trace, from Hessian-vector products only
        s, model = trained_setup(deps[inputs["train"]])
        flat = FlatModel(s.module, model.params)
        d, wd = s.data, s.training.weight_decay
        P = int(flat.theta.numel())
        seed = derive_seed(s.seed, "hessian")
        smooth = s.training.label_smoothing
        values = lanczos_extremes(
            lambda v: hessian_vector_products(flat, d.x_train, d.y_train, wd, v[None], smoothing=smooth)[0],
            P, spec.iterations, seed)
        trace = hutchinson_trace(
            lambda v: hessian_vector_products(flat, d.x_train, d.y_train, wd, v, smoothing=smooth), P,
            spec.trace_samples, seed + 1)
        negative = None
    top = values.flip(0)[: spec.top_eigenvalues]
    return Output(HessianDiagnostics(top).to_arrays(), {"hessian_results": {
        "top_eigenvalues": [[float(v) for v in top]], "min_eigenvalue": [float(values[0])],
        "trace": [trace], "n_negative": [negative]}})


def run_diagnose(inputs: dict[str, Any], deps: dict[str, Dep], ctx: Context) -> Output:
    """The trained model's health: ||grad L(theta)|| of the training objective (all training points, weight decay
    included) and L itself, and on at most ``examples`` training points (a seeded subset) the Hessian's extreme
    eigenvalues (Lanczos Ritz values) and its trace (Hutchinson)."""
    settings = CurvatureSettings.model_validate(inputs["diagnostics"])
    s, model = trained_setup(deps[inputs["train"]])
    s.module.eval()
    flat = FlatModel(s.module, model.params)
    d, wd, smooth = s.data, s.training.weight_decay, s.training.label_smoothing
    theta = flat.theta.detach().requires_grad_(True)
    n, P = int(d.x_train.shape[0]), int(theta.numel())
    rows = _rows_in_budget(s, ctx.memory_budget)
    grad = wd * theta.detach().clone()
    loss = 0.5 * wd * float((theta.detach() ** 2).sum())
    for lo in range(0, n, rows):
        part = flat.objective(theta, d.x_train[lo:lo + rows], d.y_train[lo:lo + rows], 0.0, smooth)
        share = min(rows, n - lo) / n
        grad += share * torch.autograd.grad(part, theta)[0]
        loss += share * float(part.detach())
    seed = derive_seed(s.seed, "diagnose")
    x, y = d.x_train, d.y_train
    if n > settings.examples:
        keep = here(torch.randperm(n, generator=seeded_generator(seed), device="cpu")[: settings.examples])
        x, y = x[keep], y[keep]

    def hvp(v: Tensor) -> Tensor:  # H v = sum over chunks of (their share) H_chunk v, weight decay once
        total = torch.zeros_like(v)
        for lo in range(0, int(x.shape[0]), rows):
            share = min(rows, int(x.shape[0]) - lo) / int(x.shape[0])
            total += share * hessian_vector_products(flat, x[lo:lo + rows], y[lo:lo + rows], wd, v, smoothing=smooth)
        return total

    values = lanczos_extremes(lambda v: hvp(v[None])[0], P, settings.iterations, seed)
    trace = hutchinson_trace(hvp, P, settings.trace_samples, seed + 1)
    return Output({}, {"diagnosis_results": {
        "grad_norm": [float(grad.norm())], "objective": [loss], "top_eigenvalue": [float(values[-1])],
        "min_eigenvalue": [float(values[0])], "trace": [trace], "n_params": [P], "examples": [int(x.shape[0])]}})


def _test_selection(s: TrainSetup, params: dict[str, Tensor], inputs: dict[str, Any],
                    measure: str) -> tuple[np.ndarray, np.ndarray]:
    """(positions in the test split, dataset row ids) of the selected test points; param_change_norm
    measures no test point, and its single row carries the row id -1 (its position is a placeholder)."""
    if measure == PARAM_CHANGE:
        return np.array([0]), np.array([-1])
    losses, correct = _test_losses(s.module, params, s.data.x_test, s.data.y_test)
    spec = TestPointSpec.model_validate(inputs["test_points"])
    positions = select_test_points(spec, losses, correct, s.data.test_ids, derive_seed(s.seed, "test_points"))
    return positions, s.data.test_ids[positions]


def selected_parameters(choice: str | list[str], module: nn.Module) -> list[str] | None:
    """Parameter names an estimator works over: None for all; the last Linear layer's; or the named ones."""
    names = [k for k, _ in module.named_parameters()]
    if choice == "all":
        return None
    if choice == "last_layer":
        last = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)][-1]
        return [k for k in names if k.rsplit(".", 1)[0] == last]
    unknown = [k for k in choice if k not in names]
    if unknown:
        raise TaskFailure(f"estimator params: no parameter named {', '.join(unknown)}; this model has "
                          f"{', '.join(names)}")
    return [k for k in names if k in choice]


def run_estimate(inputs: dict[str, Any], deps: dict[str, Dep], ctx: Context) -> Output:
    s, model = trained_setup(deps[inputs["train"]])
    params = model.params
    spec: AnyEstimator = TypeAdapter(EstimatorSpec).validate_python(inputs["estimator"])
    tests, test_ids = _test_selection(s, params, inputs, inputs["measure"])
    curvature = Curvature.from_arrays(deps[inputs["curvature"]].arrays) if inputs.get("curvature") else None
    spectrum_ = Spectrum(curvature.values, curvature.vectors) if curvature else None
    d = s.data
    idx = torch.as_tensor(tests, dtype=torch.long)
    checkpoints = [(c.lr, c.params) for c in model.checkpoints]
    checkpoint_buffers = [c.buffers for c in model.checkpoints]
    replicas = [TrainedModel.from_arrays(deps[h].arrays) for h in inputs.get("replicas", ())]
    estimator_inputs = EstimatorInputs(
        module=s.module, params=params, x_train=d.x_train, y_train=d.y_train, x_test=d.x_test[idx],
        y_test=d.y_test[idx], measure=inputs["measure"], weight_decay=s.training.weight_decay,
        seed=derive_seed(s.seed, "estimator", {k: v for k, v in inputs["estimator"].items() if k != "folder"}),
        spectrum=spectrum_,
        checkpoints=checkpoints, selected=selected_parameters(spec.params, s.module),
        checkpoint_buffers=checkpoint_buffers,
        replica_buffers=[r.buffers for r in replicas], smoothing=s.training.label_smoothing,
        replicas=[r.params for r in replicas],
        memory_budget=ctx.memory_budget // 4 if ctx.memory_budget else None)
    scores = ESTIMATORS[spec.name](spec, estimator_inputs).to(torch.float64)
    if not bool(torch.isfinite(scores).all()):
        if isinstance(spec, CustomEstimator):
            raise TaskFailure(f"custom estimator: {spec.scorer} returned non-finite scores")
        raise TaskFailure(f"estimator '{spec.name}' produced non-finite scores; raise its damping")
    T, n = scores.shape
    rows: dict[str, dict[str, list[Any]]] = {"estimate_rows": {
        "test_index": np.repeat(test_ids, n).tolist(), "train_index": np.tile(d.train_ids, T).tolist(),
        "estimate": scores.reshape(-1).tolist()}}
    if estimator_inputs.notes:  # what the estimator observed about its own approximation (health checks)
        rows["estimate_notes"] = {"note": list(estimator_inputs.notes),
                                  "value": [float(v) for v in estimator_inputs.notes.values()]}
    return Output(Estimate(scores, idx, torch.as_tensor(test_ids)).to_arrays(), rows)


def run_ground_truth(inputs: dict[str, Any], deps: dict[str, Dep], ctx: Context) -> Output:
    s, model = trained_setup(deps[inputs["train"]])
    params = model.params
    spec: AnyProtocol = TypeAdapter(GroundTruthSpec).validate_python(inputs["ground_truth"])
    rankings = {h: Estimate.from_arrays(deps[h].arrays).scores for h in inputs.get("rankings", [])}
    tests, test_ids = _test_selection(s, params, inputs, spec.measure)
    d = s.data
    order = derive_seed(s.seed, "order")
    inits = [model.initial_state]
    for r in range(1, spec.repeats if spec.start_from == "scratch" else 1):  # scratch repeats: fresh inits too
        fresh = models.build(s.model, d.input_shape, d.classes, derive_seed(s.seed, "init", r), d.x_train.dtype)
        inits.append({k: v.detach().clone() for k, v in [*fresh.named_parameters(), *fresh.named_buffers()]})
    setup = RetrainSetup(trained=params, inits=inits,
                         order_seeds=[order] + [derive_seed(s.seed, "order", r) for r in range(1, spec.repeats)],
                         noise_seeds=[s.noise_seed] + [derive_seed(s.seed, "dropout", r)
                                                       for r in range(1, spec.repeats)])
    idx = torch.as_tensor(tests, dtype=torch.long)
    problem = Problem(s.module, setup, s.training, d.x_train, d.y_train, d.x_test[idx], d.y_test[idx],
                      ctx.memory_budget, ctx.progress, d.validation)
    result = PROTOCOLS[spec.protocol].run(spec, problem, rankings, derive_seed(s.seed, "removals"))
    actual = result.actual
    evaluated = actual[~torch.isnan(actual)]
    if not bool(torch.isfinite(evaluated).all()):
        raise TaskFailure("ground truth produced infinite values; lower the retraining lr")
    effects = MeasuredEffects(actual, idx, result.members, result.resolution, dict(result.responses or {}),
                              dict(result.extra or {}))
    rows: dict[str, dict[str, list[Any]]] = {
        "ground_truth_results": {"protocol": [spec.protocol],
                                 "items": [int(result.members.shape[0]) if result.members is not None else
                                           int((~torch.isnan(result.per_repeat)).any(0).any(0).sum())],
                                 "repeats": [int(result.per_repeat.shape[0])], "dropped": [result.dropped]}}
    t_pos, k_pos = torch.nonzero(~torch.isnan(actual), as_tuple=True)
    values = actual[t_pos, k_pos].tolist()
    if result.members is None:
        rows["actual_rows"] = {"test_index": test_ids[t_pos.cpu().numpy()].tolist(),
                               "train_index": d.train_ids[k_pos.cpu().numpy()].tolist(), "actual": values}
    else:
        g_pos, i_pos = torch.nonzero(result.members, as_tuple=True)
        rows["group_members"] = {"group_index": g_pos.tolist(),
                                 "train_index": d.train_ids[i_pos.cpu().numpy()].tolist()}
        rows["group_actual"] = {"test_index": test_ids[t_pos.cpu().numpy()].tolist(), "group_index": k_pos.tolist(),
                                "actual": values}
    if result.solver is not None:
        item, norms, its, reached, starts, tolerances = result.solver
        rows["solver_rows"] = {"train_index": [None if i < 0 else int(d.train_ids[i]) for i in item],
                               "grad_norm": norms, "iterations": its, "converged": reached,
                               "start_grad_norm": starts, "tolerance": tolerances}
    elif result.convergence is not None:  # warm-start gradient retraining: how far each refit got
        item, starts, ends = result.convergence
        rows["solver_rows"] = {"train_index": [int(d.train_ids[i]) for i in item], "grad_norm": ends,
                               "iterations": [None] * len(item), "start_grad_norm": starts}
    per_repeat = result.per_repeat.cpu().numpy()
    if inputs.get("ceiling_items") == "resolved" and result.resolution is not None:  # metrics: resolved_only
        unresolved = np.abs(actual.cpu().numpy()) < result.resolution.cpu().numpy()[:, None]
        per_repeat = np.where(unresolved[None], np.nan, per_repeat)
    derived = noise_ceiling(per_repeat, seed=s.seed, test_ids=test_ids.tolist())
    if result.resolution is not None:
        derived += resolution_rows(actual.cpu().numpy(), result.resolution.cpu().numpy())
    derived += result.metric_rows or []
    if result.responses is not None:
        loo, pbrf = result.responses["converged_loo"], result.responses["pbrf"]
        derived += gap_rows(pbrf.cpu().numpy(), loo.cpu().numpy(), "pbrf_vs_converged_loo")
        derived += gap_rows(loo.cpu().numpy(), actual.cpu().numpy(), "converged_loo_vs_retrained")
        kept = {"test_index": [], "train_index": [], "response": [], "value": []}  # type: dict[str, list[Any]]
        for name, values_ in (("retrained", actual), ("converged_loo", loo), ("pbrf", pbrf)):
            tt, ii = torch.nonzero(~torch.isnan(values_), as_tuple=True)
            kept["test_index"] += test_ids[tt.cpu().numpy()].tolist()
            kept["train_index"] += d.train_ids[ii.cpu().numpy()].tolist()
            kept["response"] += [name] * len(tt)
            kept["value"] += values_[tt, ii].tolist()
        rows["response_rows"] = kept
    if derived:
        rows.update(_metric_tables(derived, test_ids.tolist()))
    return Output(effects.to_arrays(), rows)


def _metric_tables(rows: list[MetricRow], test_ids: list[int]) -> dict[str, dict[str, list[Any]]]:
    """``metric_rows`` and, for test points that carry them, ``metric_replicates`` (item-level bootstrap)."""
    kept = [r for r in rows if r.replicates is not None and r.test is not None]
    tables: dict[str, dict[str, list[Any]]] = {"metric_rows": {
        "test_index": [None if r.test is None else test_ids[r.test] for r in rows],
        "metric": [r.metric for r in rows], "value": [r.value for r in rows],
        "n_pairs": [r.n_pairs for r in rows], "ci_low": [r.ci_low for r in rows],
        "ci_high": [r.ci_high for r in rows]}}
    if kept:
        tables["metric_replicates"] = {
            "test_index": [test_ids[r.test] for r in kept if r.test is not None], "metric": [r.metric for r in kept],
            "replicates": [np.asarray(r.replicates, dtype=np.float64).tolist() for r in kept]}
    return tables


def run_metrics(inputs: dict[str, Any], deps: dict[str, Dep], ctx: Context) -> Output:
    est = Estimate.from_arrays(deps[inputs["estimate"]].arrays)
    gt = MeasuredEffects.from_arrays(deps[inputs["ground_truth"]].arrays)
    if not torch.equal(est.tests, gt.tests):
        raise TaskFailure("estimate and ground truth selected different test points")
    spec = MetricsSpec.model_validate(inputs["metrics"])
    protocol: AnyProtocol = TypeAdapter(GroundTruthSpec).validate_python(
        deps[inputs["ground_truth"]].inputs["ground_truth"])
    test_ids = est.test_ids.tolist()
    order = protocol.ranking_order(tuple(deps[inputs["ground_truth"]].inputs.get("rankings", [])))
    ranking = order.index(inputs["estimate"]) if inputs["estimate"] in order else None
    scoring = Scoring(est.scores.cpu().numpy(), gt, list(spec.names), spec.top_k, spec.bootstrap,
                      spec.resolved_only, int(inputs["seed"]), test_ids, ranking)
    rows = PROTOCOLS[protocol.protocol].metrics(protocol, scoring)
    return Output({}, _metric_tables(rows, test_ids))


RUNNERS: dict[str, Callable[[dict[str, Any], dict[str, Dep], Context], Output]] = {
    "train": run_train,
    "curvature": run_curvature,
    "hessian": run_hessian,
    "diagnose": run_diagnose,
    "estimate": run_estimate,
    "ground_truth": run_ground_truth,
    "metrics": run_metrics,
}


def run_task(kind: str, inputs: dict[str, Any], deps: dict[str, Dep], ctx: Context) -> tuple[Output, float]:
    """One task on ``ctx.device``: dependencies' arrays are moved there, tensors the task creates default to
    it, and the output arrays come back to the CPU (artifacts and rows are device-independent)."""
    start = time.perf_counter()
    if ctx.device == "cpu":
        out = RUNNERS[kind](inputs, deps, ctx)
        return out, time.perf_counter() - start
    device = torch.device(ctx.device)
    moved = {h: Dep(d.inputs, {k: v.to(device) for k, v in d.arrays.items()}) for h, d in deps.items()}
    with device:
        out = RUNNERS[kind](inputs, moved, ctx)
    return Output({k: v.cpu() for k, v in out.arrays.items()}, out.rows), time.perf_counter() - start
