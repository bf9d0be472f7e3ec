"""``training:`` -- how the base model is trained.

The objective is L(theta) = (1/n) sum_j w_j loss_j(theta) + weight_decay/2 ||theta||^2 over all
parameters, with n the full training-set size and every w_j = 1 for the base model (LANGUAGE.md).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from inflang.spec.base import Spec


class EarlyStoppingSpec(Spec):
    """Stop when the validation loss has not improved for ``patience`` evaluations; keep the best model."""

    validation: float = Field(0.1, gt=0, lt=1, description="fraction of the training split held out (seeded, "
                              "stratified) as a validation set; those points are never trained on or removed")
    patience: int = Field(10, ge=1, description="evaluations without a lower validation loss before stopping")
    every: int = Field(1, ge=1, description="epochs between evaluations of the validation loss")

    def validation_size(self, n_train: int) -> int:
        return max(1, int(round(self.validation * n_train)))


class PolishSpec(Spec):
    """After training, L-BFGS on the full-batch regularised objective until ||grad L(theta)|| <= tol: influence
    functions assume a stationary point, and every task that starts from the trained model (estimators,
    diagnostics, warm-start and converged ground truth) then starts from one."""

    tol: float | None = Field(None, gt=0, description="stop at this gradient norm (the objective's 2-norm over all "
                              "parameters); null = 1e-8 in float64, 1e-4 in float32 (whose rounding stops the line "
                              "search near it)")
    max_steps: int = Field(2000, ge=1, le=1_000_000, description="L-BFGS iterations at most (each a full-batch "
                           "gradient and a strong-Wolfe line search)")

    def tolerance(self, dtype: str) -> float:
        return self.tol if self.tol is not None else (1e-8 if dtype == "float64" else 1e-4)


class TrainingSpec(Spec):
    late_fields: ClassVar[tuple[str, ...]] = ("polish",)

    optimizer: Literal["sgd", "adam", "lbfgs"] = Field("adam", description="sgd | adam | lbfgs")
    lr: float = Field(0.01, gt=0, description="learning rate (for lbfgs: the step length scale)")
    epochs: int = Field(1000, ge=1, le=10_000_000, description="passes over the training set")
    batch_size: int | None = Field(None, ge=1, description="null = full batch")
    weight_decay: float = Field(0.001, ge=0, description="objective adds weight_decay/2 * ||theta||^2")
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd only")
    dtype: Literal["float32", "float64"] = Field("float64", description="float32 | float64")
    schedule: Literal["constant", "cosine", "step"] = Field(
        "constant", description="learning rate over training: constant | cosine (lr * (1 + cos(pi t / T)) / 2) | "
        "step (lr * gamma^floor(epoch / step_epochs))")
    step_epochs: int = Field(30, ge=1, description="schedule: step -- epochs between decays")
    gamma: float = Field(0.1, gt=0, le=1, description="schedule: step -- the decay factor")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="train on targets (1 - e) one_hot + e / classes; "
                                   "influence and curvature follow the smoothed loss, test losses stay plain")
    checkpoints: int = Field(0, ge=0, le=1000, description="keep this many evenly spaced snapshots of the "
                             "parameters during training (read by the tracin estimator)")
    early_stopping: EarlyStoppingSpec | None = Field(
        None, description="off by default; when set, a validation set is held out of the training split and the "
        "model with the lowest validation loss is kept (scratch retraining does the same per model)")
    polish: PolishSpec | None = Field(
        None, description="off by default; when set, the trained model is taken to a stationary point of its "
        "full-batch objective (||grad L|| <= tol) by L-BFGS before anything starts from it")

    def trained_on(self, n_split: int) -> int:
        """Training points left once the validation set (early stopping) is held out of a split of n_split."""
        return n_split - (self.early_stopping.validation_size(n_split) if self.early_stopping else 0)

    def steps_per_epoch(self, n_train: int) -> int:
        if self.optimizer == "lbfgs" or self.batch_size is None or self.batch_size >= n_train:
            return 1
        return -(-n_train // self.batch_size)

    def total_steps(self, n_train: int) -> int:
        return self.epochs * self.steps_per_epoch(n_train)
