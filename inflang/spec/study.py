"""The whole study file: one pydantic model whose sections live in sibling modules."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, WithJsonSchema, field_validator

from inflang.spec.base import Spec
from inflang.spec.claims import Claim
from inflang.spec.dataset import DatasetSpec
from inflang.spec.diagnostics import DiagnosticsSpec
from inflang.spec.estimators import (
    PARAMETER_CHANGE_ESTIMATORS,
    EstimatorFacts,
    EstimatorSpec,
    estimator_label,
)
from inflang.spec.model import IMAGE_ARCHS, MlpModel, ModelSpec
from inflang.spec.protocols import GroundTruthSpec, LooProtocol, StudyFacts
from inflang.spec.selection import METRICS_JSON_SCHEMA, HessianSpec, MetricsSpec, TestPointSpec
from inflang.spec.training import TrainingSpec

SweepGrid = dict[str, list[Any]]


def is_study_name(name: str) -> bool:
    """Lowercase letters, digits, '-' and '_', starting with a letter or digit, at most 100 characters."""
    return re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,99}", name) is not None


class Study(Spec):
    study: str = Field(description="the study's name, [a-z0-9][a-z0-9_-]*; results are keyed by it")
    description: str = Field("", description="one line saying what the study asks")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="master seed; every random choice derives from it")
    dataset: DatasetSpec
    model: ModelSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    estimators: list[EstimatorSpec] = Field(min_length=1, description="influence estimators, by name")
    test_points: TestPointSpec = Field(default_factory=TestPointSpec)
    ground_truth: GroundTruthSpec = Field(
        default_factory=lambda: LooProtocol(protocol="loo"), description="how actual effects are measured")
    metrics: Annotated[MetricsSpec, WithJsonSchema(METRICS_JSON_SCHEMA)] = Field(
        default_factory=MetricsSpec, description="a list of metric names, or {names: [...], top_k: k, bootstrap: B}")
    hessian: HessianSpec | None = Field(None, description="optional curvature diagnostics")
    diagnostics: DiagnosticsSpec = Field(default_factory=DiagnosticsSpec, description="the health checks' "
                                         "thresholds (damping, stationarity, interpolation, convergence, resolution, "
                                         "noise ceiling, LiSSA, Arnoldi, K-FAC)")
    repeats: int = Field(1, ge=1, le=1000, description="independent seeds of every cell")
    claims: list[Claim] = Field(default_factory=list, description="hypotheses, each answered with a verdict "
                                "backed by an interval (trend, contrast, compare, at_least, at_most, "
                                "between_test_points)")
    claims_adjust: Literal["none", "holm", "bonferroni"] = Field(
        "none", description="family-wise intervals for the study's claims: none (each at 95%), holm (Holm's "
        "step-down: at most a 5% chance of any false supported or contradicted) or bonferroni (every interval "
        "at 1 - 0.05/m)")
    sweep: SweepGrid | list[SweepGrid] | None = Field(
        None, description="dotted paths to lists of values (cartesian product), or a list of such maps (union)")

    @field_validator("study")
    @classmethod
    def _name(cls, value: str) -> str:
        if not is_study_name(value):
            raise ValueError(f"'{value}' is not a study name: use lowercase letters, digits, '-' and '_' "
                             "(starting with a letter or digit, at most 100 characters)")
        return value



def regression_problems(study: Study) -> list[tuple[tuple[str | int, ...], str, str | None]]:
    """What a regression dataset (real-valued targets, squared error) cannot be combined with."""
    problems: list[tuple[tuple[str | int, ...], str, str | None]] = []
    why = "the dataset has real-valued targets (squared-error regression)"
    if study.dataset.label_noise:
        problems.append((("dataset", "label_noise"), f"flips class labels, and {why}", "use noise: instead"))
    if study.training.label_smoothing:
        problems.append((("training", "label_smoothing"), f"smooths class labels, and {why}", None))
    if study.test_points.select == "misclassified":
        problems.append((("test_points", "select"), f"misclassified needs classes, and {why}",
                         "use highest_loss"))
    for i, est in enumerate(study.estimators):
        if est.classifiers_only:
            problems.append((("estimators", i, "name"), f"{est.name} is defined for classifiers, and {why}", None))
    return problems


def study_facts(study: Study) -> StudyFacts:
    """What the ground-truth protocol's rules need to know about the rest of the study."""
    n_split, n_test = study.dataset.split_sizes()
    info = study.dataset.info()
    tp = study.test_points
    points = len(set(tp.indices or [])) if tp.select == "indices" else min(tp.count, n_test)
    return StudyFacts(n_train=study.training.trained_on(n_split), test_points=points,
                      classes=1 if info.regression else info.classes, regression=info.regression,
                      batch_norm=getattr(study.model, "norm", None) == "batch",
                      labels=tuple(estimator_label(e) for e in study.estimators),
                      estimators=tuple(e.name for e in study.estimators),
                      dropout=float(getattr(study.model, "dropout", 0.0) or 0.0))


def _polish_problems(study: Study) -> list[tuple[tuple[str | int, ...], str, str | None]]:
    """``training.polish`` takes the trained model to a stationary point of its full-batch objective."""
    problems: list[tuple[tuple[str | int, ...], str, str | None]] = []
    if study.training.weight_decay == 0:
        problems.append((("training", "polish"), "needs weight_decay > 0: without it a network that fits its "
                         "training set may have no finite minimiser (its logits grow without bound)",
                         "set training.weight_decay (e.g. 0.001)"))
    if getattr(study.model, "norm", "none") == "batch":
        problems.append((("training", "polish"), "a model with BatchNorm has no single full-batch objective to "
                         "polish (training normalises by each batch's statistics)", "use norm: group or none"))
    if study.training.early_stopping is not None:
        problems.append((("training", "polish"), "polish takes the model to the training objective's stationary "
                         "point, undoing early stopping's choice of an earlier model", "drop one of the two"))
    if study.ground_truth.start_from == "scratch":
        problems.append((("training", "polish"), "scratch retraining trains each model as base training did, "
                         "without polish, so its control would not be the polished model",
                         "use ground_truth.start: optimum"))
    return problems


def semantic_problems(study: Study) -> list[tuple[tuple[str | int, ...], str, str | None]]:
    """Checks across sections that a single field cannot make: (path, message, hint) for each problem."""
    problems: list[tuple[tuple[str | int, ...], str, str | None]] = []
    labels = [estimator_label(e) for e in study.estimators]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            problems.append((("estimators", i), f"a second estimator is labelled '{label}'",
                             "give each estimator a distinct 'label:'"))
    n_train, n_test = study.dataset.split_sizes()
    info = study.dataset.info()
    classes = 1 if info.regression else info.classes  # points a (stratified) split needs per part
    if n_test < 1 or n_train < max(2, classes):
        problems.append((("dataset", "test_size"),
                         f"leaves {n_train} training and {n_test} test points out of {info.rows}", None))
    if info.regression:
        problems += regression_problems(study)
    elif study.dataset.test_size is not None and isinstance(study.dataset.test_size, int) and n_test < classes:
        problems.append((("dataset", "test_size"),
                         f"a stratified split needs at least {info.classes} test points", None))
    tr = study.training
    if tr.early_stopping is not None and tr.trained_on(n_train) < max(2, classes):
        problems.append((("training", "early_stopping", "validation"),
                         f"holding out {tr.early_stopping.validation_size(n_train)} of {n_train} training points "
                         f"leaves {tr.trained_on(n_train)} to train on", "lower the validation fraction"))
    if study.model.arch in IMAGE_ARCHS and info.shape is None:
        problems.append((("model", "arch"), f"{study.model.arch} needs an image dataset, and {study.dataset.name} "
                         "is a table", "use digits, mnist, fashion_mnist, small_mnist, cifar10 or cifar100"))
    if study.model.arch == "vgg" and info.shape is not None and min(info.shape[1:]) < 32:
        problems.append((("model", "arch"), f"vgg halves the image five times and needs at least 32x32 images; "
                         f"{study.dataset.name} has {info.shape[1]}x{info.shape[2]}", "use cnn, lenet or resnet"))
    if tr.optimizer == "lbfgs" and isinstance(study.model, MlpModel) and study.model.dropout:
        problems.append((("model", "dropout"), "lbfgs needs a deterministic objective; dropout makes it random",
                         "use sgd or adam with dropout"))
    if tr.optimizer == "lbfgs" and tr.checkpoints:
        problems.append((("training", "checkpoints"), "lbfgs takes no fixed steps to snapshot; checkpoints need "
                         "sgd or adam", None))
    if tr.optimizer == "lbfgs" and tr.schedule != "constant":
        problems.append((("training", "schedule"), "lbfgs has its own step lengths; a schedule needs sgd or adam",
                         None))
    if tr.optimizer == "lbfgs" and tr.early_stopping is not None:
        problems.append((("training", "early_stopping"), "lbfgs takes no epochs to evaluate between; early "
                         "stopping needs sgd or adam", None))
    if tr.optimizer == "lbfgs" and tr.batch_size is not None:
        problems.append((("training", "batch_size"), "lbfgs trains full batch; set batch_size: null", None))
    if tr.polish is not None:
        problems += _polish_problems(study)
    if tr.momentum and tr.optimizer != "sgd":
        problems.append((("training", "momentum"), f"momentum applies to sgd, not {tr.optimizer}", None))
    tp = study.test_points
    if tp.select != "indices" and tp.count > n_test:
        problems.append((("test_points", "count"), f"{tp.count} test points asked, the split has {n_test}", None))
    if tp.indices:
        for j, idx in enumerate(tp.indices):
            if not 0 <= idx < info.rows:
                problems.append((("test_points", "indices", j),
                                 f"row id {idx} is outside the dataset (0..{info.rows - 1})", None))
    gt = study.ground_truth
    facts = study_facts(study)
    for ranking in gt.rankings(facts.labels):
        if ranking.label is None:
            problems.append((ranking.where, f"select: {ranking.select} needs 'by:', the estimator whose "
                             "ranking is used", f"one of: {', '.join(labels)}"))
        elif ranking.label not in labels:
            problems.append((ranking.where, f"no estimator labelled '{ranking.label}' in this study",
                             f"one of: {', '.join(labels)}"))
    problems += gt.problems(facts)
    if gt.measure == "param_change_norm":
        for i, est in enumerate(study.estimators):
            if not est.predicts_parameter_change:
                problems.append((("estimators", i, "name"), f"{est.name} predicts no parameter change, so it "
                                 "has no estimate for measure: param_change_norm",
                                 f"use one of {', '.join(PARAMETER_CHANGE_ESTIMATORS)} with it"))
    newton = gt.converged
    if gt.optimizer is None and tr.optimizer == "lbfgs" and not newton:
        problems.append((("training", "optimizer"),
                         "lbfgs has no batched retraining rule, so ground truth needs its own optimizer",
                         "set ground_truth.optimizer: sgd or adam (and ground_truth.lr)"))
    if gt.start_from == "optimum" and not newton and tr.schedule != "constant" and gt.lr is None:
        problems.append((("ground_truth",),
                         f"a warm start retrains the trained model at a constant rate, and training.lr ({tr.lr:g}) "
                         f"is the peak of its {tr.schedule} schedule, not where training ended",
                         "set ground_truth.lr (e.g. the rate at the end of training, or a tenth of training.lr)"))
    if gt.momentum is not None and gt.optimizer == "adam":
        problems.append((("ground_truth", "momentum"), "momentum applies to sgd, and retraining uses adam",
                         "set ground_truth.optimizer: sgd, or leave it unset"))
    if gt.start_from == "scratch" and gt.momentum is not None:
        problems.append((("ground_truth", "momentum"), "start: scratch repeats the original training; it takes no "
                         "momentum override", None))
    if gt.start_from == "scratch" and (gt.optimizer not in (None, tr.optimizer) or gt.lr not in (None, tr.lr)):
        problems.append((("ground_truth", "start"),
                         "start: scratch repeats the original training; it takes no optimizer or lr override", None))
    n_params = study.model.n_params(info)
    known = EstimatorFacts(n_params=n_params, n_train=n_train, checkpoints=study.training.checkpoints,
                           weight_decay=study.training.weight_decay)
    for i, est in enumerate(study.estimators):
        problems += [(("estimators", i, *where), message, hint) for where, message, hint in est.problems(known)]
    if study.hessian is not None and study.hessian.method == "exact" and n_params > study.hessian.max_params:
        problems.append((("hessian",), f"the model has {n_params} parameters, more than "
                         f"max_params = {study.hessian.max_params}", "use hessian.method: lanczos"))
    return problems
