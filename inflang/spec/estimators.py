"""``estimators:`` -- influence estimators, discriminated by ``name``.

Sign and scale (LANGUAGE.md): an estimate is the predicted change in the measured quantity when a
training point is removed, estimate(z_i, z_test) = (1/n) g_test^T (H + damping I)^-1 g_i, where H is the
Hessian of the training objective. Estimators that only rank (gradient similarity) store their raw score.
A new estimator is one model here (added to ``EstimatorSpec``) plus one module in ``runners/estimators``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal, get_args

from pydantic import Field, model_validator

from inflang.spec.base import CodeFields, Spec
from inflang.spec.diagnostics import DiagnosticsSpec
from inflang.units import share_text

Rule = tuple[tuple[str | int, ...], str, str | None]  # (path below the estimator, message, hint)
Health = tuple[str, float, float, str]  # (check, value, threshold, message): a health check that warns


@dataclass(frozen=True)
class EstimatorFacts:
    """What an estimator's rules need to know about the rest of its study."""

    n_params: int  # of the whole model
    n_train: int  # points trained on
    checkpoints: int  # training.checkpoints
    weight_decay: float


class EstimatorBase(Spec):
    label: str | None = Field(None, description="name in result tables; defaults to the estimator name")
    params: Literal["all", "last_layer"] | list[str] = Field(
        "all", description="the parameters influence is computed over: all, last_layer, or a list of parameter "
        "names (e.g. ['2.weight', '2.bias']); curvature is then the Hessian's block for them")

    uses_curvature: ClassVar[bool] = False  # needs an eigendecomposition of the curvature (a shared task)
    dense_hessian: ClassVar[bool] = False  # forms a P x P matrix (refused above max_params)
    # every estimator states ranks_only (a raw score, not a predicted change); a custom one per instance
    predicts_parameter_change: ClassVar[bool] = False  # has an estimate for measure: param_change_norm
    assumes_optimum: ClassVar[bool] = False  # inverts curvature at the trained model: assumes a stationary point
    classifiers_only: ClassVar[bool] = False  # defined for classifiers (refused on real-valued targets)

    def problems(self, facts: EstimatorFacts) -> list[Rule]:
        """What the rest of the study rules out for this estimator (``semantic_problems`` reports them)."""
        return []

    def health(self, top: float | None, low: float | None, notes: dict[str, float],
               limits: DiagnosticsSpec) -> list[Health]:
        """This estimator's own health checks that warn, from the trained model's extreme Hessian eigenvalues
        (Lanczos' Ritz values; None when not measured), the facts its runner noted (``estimate_notes``) and the
        study's ``diagnostics:`` thresholds."""
        return []

    @property
    def trained_models(self) -> int:
        """How many independently trained models this estimator reads (the cell's own model first)."""
        return int(getattr(self, "models", 1))

    @property
    def curvature_kind(self) -> str | None:
        """Which curvature's eigendecomposition this estimator reads, if any."""
        return str(getattr(self, "curvature", "hessian")) if self.uses_curvature else None

    @property
    def display(self) -> str:
        return self.label or self.name  # type: ignore[attr-defined]


class InverseCurvatureEstimator(EstimatorBase):
    """An estimator that inverts (an approximation of) the curvature at the trained model: it predicts the
    change of the measured quantity and of the parameters, and assumes a stationary point."""

    predicts_parameter_change: ClassVar[bool] = True
    assumes_optimum: ClassVar[bool] = True
    ranks_only: ClassVar[bool] = False


class ExactEstimator(InverseCurvatureEstimator):
    """Explicit Hessian H of the training objective at the trained parameters, inverted by eigendecomposition."""

    name: Literal["exact"]
    damping: float = Field(0.001, ge=0, description="lambda in (H + lambda I)^-1")
    curvature: Literal["hessian", "ggn"] = Field(
        "hessian", description="hessian: the objective's Hessian; ggn: its Gauss-Newton matrix "
        "(1/n) sum_i J_i^T H_out,i J_i + weight_decay I, positive semi-definite")
    negative: Literal["error", "abs", "clip"] = Field(
        "error",
        description="eigenvalues of H + lambda I that are <= 0: error (fail the cell), "
        "abs (use |eigenvalue| + lambda), clip (drop those directions)",
    )
    max_params: int = Field(5000, ge=1, description="refuse models with more parameters (the Hessian is P x P)")

    uses_curvature: ClassVar[bool] = True
    dense_hessian: ClassVar[bool] = True

    def problems(self, facts: EstimatorFacts) -> list[Rule]:
        if facts.n_params > self.max_params:
            return [((), f"the model has {facts.n_params} parameters, more than max_params = {self.max_params}",
                     "the exact Hessian is P x P; use cg, lissa or arnoldi, a smaller model, or raise max_params")]
        return []


class CgEstimator(InverseCurvatureEstimator):
    """Conjugate gradient on Hessian-vector products: solves (H + damping I) x = g_test per test point."""

    name: Literal["cg"]
    damping: float = Field(0.001, ge=0, description="lambda in (H + lambda I)^-1")
    max_iter: int = Field(1000, ge=1, description="CG iterations at most")
    tol: float = Field(1e-10, gt=0, lt=1, description="stop when ||residual|| <= tol * ||g_test||")


class LissaEstimator(InverseCurvatureEstimator):
    """LiSSA (Agarwal et al. 2017; Koh & Liang 2017): h_j = v + (1 - damping/scale) h_{j-1} - H_B h_{j-1}/scale,
    (H + damping I)^-1 v ~ h_J / scale, with H_B the Hessian on a minibatch B; averaged over ``repeats``.

    Koh & Liang's damping d and scale s correspond to damping = s * d here.
    """

    name: Literal["lissa"]
    damping: float = Field(0.001, ge=0, description="lambda in (H + lambda I)^-1")
    scale: float = Field(10.0, gt=0, description="s; must exceed the largest eigenvalue of H + lambda I")
    recursion_depth: int = Field(5000, ge=1, description="J, iterations per repeat")
    repeats: int = Field(1, ge=1, description="independent recursions averaged")
    batch_size: int | None = Field(None, ge=1, description="minibatch for each Hessian-vector product; null = full")

    def problems(self, facts: EstimatorFacts) -> list[Rule]:
        if self.batch_size is not None and self.batch_size > facts.n_train:
            return [(("batch_size",), f"batch_size {self.batch_size} is larger than the training set "
                     f"({facts.n_train} points)", None)]
        return []

    def health(self, top: float | None, low: float | None, notes: dict[str, float],
               limits: DiagnosticsSpec) -> list[Health]:
        """``lissa_not_converged``: the recursion's error along an eigen-direction of eigenvalue e shrinks by
        |1 - (e + damping) / scale| a step; after J steps the slowest direction keeps that factor to the J.
        Lanczos' smallest Ritz value bounds lambda_min from above: min(it, 0) keeps the check conservative."""
        if top is None or low is None:
            return []
        bottom = min(low, 0.0)
        slow, fast = abs(1 - (bottom + self.damping) / self.scale), abs(1 - (top + self.damping) / self.scale)
        factor = max(slow, fast)
        residual = factor ** self.recursion_depth if factor < 1 else math.inf
        if residual <= limits.lissa_residual:
            return []
        end = (f"the Hessian's smallest eigenvalue (<= {bottom:.3g})" if slow >= fast else
               f"its largest ({top:.3g}), which scale {self.scale:g} barely exceeds")
        return [("lissa_not_converged", residual, limits.lissa_residual,
                 f"after {self.recursion_depth} steps the recursion keeps {share_text(residual)} of its error along "
                 f"{end}: raise recursion_depth or damping, or lower scale")]


class ArnoldiEstimator(InverseCurvatureEstimator):
    """Arnoldi (Schioppa et al. 2022): the top_k eigenpairs (u_k, e_k) of H from an arnoldi_dim Krylov space;
    estimate = (1/n) sum_k (g_test . u_k)(g_i . u_k) / (e_k + damping)."""

    name: Literal["arnoldi"]
    damping: float = Field(0.001, ge=0, description="added to every kept eigenvalue")
    arnoldi_dim: int = Field(200, ge=1, description="Krylov iterations (capped at the parameter count)")
    top_k: int = Field(50, ge=1, description="eigenpairs kept, by largest |eigenvalue|")

    @model_validator(mode="after")
    def _k_within_dim(self) -> ArnoldiEstimator:
        if self.top_k > self.arnoldi_dim:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed arnoldi_dim ({self.arnoldi_dim})")
        return self

    def problems(self, facts: EstimatorFacts) -> list[Rule]:
        if self.top_k > facts.n_params:
            return [(("top_k",), f"top_k = {self.top_k} is more than the model's {facts.n_params} parameters", None)]
        return []

    def health(self, top: float | None, low: float | None, notes: dict[str, float],
               limits: DiagnosticsSpec) -> list[Health]:
        """``arnoldi_few_directions``: the kept eigenvalues' share of the Hessian's trace (noted by the runner)."""
        mass = notes.get("arnoldi_mass")
        if mass is None or not mass < limits.arnoldi_mass:
            return []
        return [("arnoldi_few_directions", mass, limits.arnoldi_mass,
                 f"the {self.top_k} kept eigenvalues hold {share_text(mass)} of the Hessian's trace: "
                 "raise top_k (and arnoldi_dim)")]


class GradDotEstimator(EstimatorBase):
    """(1/n) g_test . g_i: the influence function with H replaced by the identity (ranks only)."""

    name: Literal["grad_dot"]
    ranks_only: ClassVar[bool] = True


class GradCosEstimator(EstimatorBase):
    """Cosine similarity of g_test and g_i (ranks only)."""

    name: Literal["grad_cos"]
    ranks_only: ClassVar[bool] = True


class TracinEstimator(EstimatorBase):
    """TracInCP (Pruthi et al. 2020): (1/n) sum_c lr_c g_test(theta_c) . g_i(theta_c) over the checkpoints that
    ``training.checkpoints`` keeps, lr_c the learning rate at checkpoint c (ranks only)."""

    name: Literal["tracin"]
    ranks_only: ClassVar[bool] = True

    def problems(self, facts: EstimatorFacts) -> list[Rule]:
        if facts.checkpoints < 1:
            return [(("name",), "tracin reads checkpoints, and training keeps none",
                     "set training.checkpoints (e.g. 5)")]
        return []


class RepresenterEstimator(EstimatorBase):
    """Representer points (Yeh et al. 2018) on the last linear layer: alpha_i = -(1/(weight_decay n))
    dloss_i/dlogits, and the score of training point i for a test point is alpha_i[y_test] f_i . f_test, with
    f the last layer's inputs (ranks only; needs weight_decay > 0)."""

    name: Literal["representer"]
    ranks_only: ClassVar[bool] = True
    classifiers_only: ClassVar[bool] = True

    def problems(self, facts: EstimatorFacts) -> list[Rule]:
        if facts.weight_decay <= 0:
            return [(("name",), "representer points need weight_decay > 0", "set training.weight_decay")]
        return []


class DataInfEstimator(InverseCurvatureEstimator):
    """DataInf (Kwon et al. 2024): per layer l, (G_l + lambda_l I)^-1 by the closed form
    (1/(n lambda_l)) sum_j (I - g_jl g_jl^T / (lambda_l + ||g_jl||^2)), G_l the layer's mean gradient outer
    product; estimate = (1/n) sum_l g_test,l^T (G_l + lambda_l I)^-1 g_i,l."""

    name: Literal["datainf"]
    damping: float | None = Field(None, gt=0, description="lambda_l for every layer; default 0.1 x the mean "
                                  "eigenvalue of G_l (its trace over its size), per layer")


class KroneckerEstimator(InverseCurvatureEstimator):
    """What K-FAC and EK-FAC share: the output factor they build the Kronecker factors from."""

    def health(self, top: float | None, low: float | None, notes: dict[str, float],
               limits: DiagnosticsSpec) -> list[Health]:
        """``kfac_uncovered``: the share of parameters outside Linear/Conv2d layers (noted by the runner)."""
        uncovered = notes.get("kfac_uncovered")
        if uncovered is None or not uncovered > limits.kfac_uncovered:
            return []
        return [("kfac_uncovered", uncovered, limits.kfac_uncovered,
                 f"{share_text(uncovered)} of the parameters are outside Linear/Conv2d layers, which "
                 f"{self.name} does not factor: their influence is left out")]  # type: ignore[attr-defined]

    fisher: Literal["expected", "empirical"] = Field(
        "expected", description="expected: output factor from diag(p) - p p^T (the Gauss-Newton matrix, exact "
        "expectation over labels); empirical: from the true-label gradient p - y (the empirical Fisher)")


class KfacEstimator(KroneckerEstimator):
    """K-FAC (Martens & Grosse 2015; Grosse & Martens 2016 for Conv2d): per Linear/Conv2d layer the Gauss-Newton
    block ~ A (x) S (input and output-gradient second moments, exact expectation over labels); estimate =
    (1/n) g_test^T (G_kfac + (weight_decay + damping) I)^-1 g_i over those layers' parameters."""

    name: Literal["kfac"]
    damping: float | None = Field(None, ge=0, description="added to every eigenvalue of a layer's factorised "
                                  "curvature; default 0.1 x the mean eigenvalue of each layer")


class EkfacEstimator(KroneckerEstimator):
    """EK-FAC (George et al. 2018; Grosse et al. 2023): K-FAC's Kronecker eigenbasis with its eigenvalues
    refitted to the Gauss-Newton matrix's diagonal in that basis."""

    name: Literal["ekfac"]
    damping: float | None = Field(None, ge=0, description="added to every corrected eigenvalue; default "
                                  "0.1 x the mean corrected eigenvalue of each layer")


class TrakEstimator(EstimatorBase):
    """TRAK (Park, Georgiev, Ilyas, Leclerc & Madry 2023): per model m, phi = R^T grad f with f = log(p_y / (1 - p_y))
    and R a seeded Gaussian projection [P, proj_dim]; score = (1/M sum_m phi_test^T (Phi_m^T Phi_m + damping I)^+
    phi_i) x (1/M sum_m (1 - p_i,m)), signed as a change in the measured quantity on removal (ranks only)."""

    name: Literal["trak"]
    ranks_only: ClassVar[bool] = True
    classifiers_only: ClassVar[bool] = True
    proj_dim: int = Field(512, ge=1, description="dimension of the random projection of the gradients")
    models: int = Field(1, ge=1, le=1000, description="independently trained models averaged over (the cell's "
                        "model and models - 1 more, same data split, fresh initialisation and batch order)")
    damping: float = Field(0.0, ge=0, description="added to Phi^T Phi before the (pseudo-)inverse")


class CustomEstimator(EstimatorBase, CodeFields):
    """The study's own attribution method: ``scorer`` (module:callable) is called as scorer(inputs, **args) with
    the ``EstimatorInputs`` every built-in estimator receives (docs/language.md, "Your own code") and returns
    scores [T, n_train]: the predicted change of each selected test point's measured quantity when each
    training point is removed (LANGUAGE.md's sign), or with ``ranks_only`` a raw score that only ranks."""

    name: Literal["custom"]
    scorer: str = Field(description="module:callable returning scores [T, n_train], e.g. my_methods:half_grad_dot")
    ranks_only: bool = Field(False, description="a raw score that ranks training points, not a predicted change "
                             "(as grad_dot)")


AnyEstimator = (ExactEstimator | CgEstimator | LissaEstimator | ArnoldiEstimator | GradDotEstimator
                | GradCosEstimator | TracinEstimator | RepresenterEstimator | DataInfEstimator | KfacEstimator
                | EkfacEstimator | TrakEstimator | CustomEstimator)
EstimatorSpec = Annotated[AnyEstimator, Field(discriminator="name")]


def _names(where: Callable[[type[EstimatorBase]], bool]) -> tuple[str, ...]:
    """The names of the union's estimators whose class ``where`` holds for, in the union's order."""
    return tuple(get_args(cls.model_fields["name"].annotation)[0] for cls in get_args(AnyEstimator) if where(cls))


# names of the estimators with an estimate for measure: param_change_norm
PARAMETER_CHANGE_ESTIMATORS = _names(lambda cls: cls.predicts_parameter_change)
# names of the estimators whose scores rank training points but predict no change (grad_dot, trak, ...)
RANK_ONLY_NAMES = frozenset(_names(lambda cls: getattr(cls, "ranks_only", None) is True))


def estimator_label(spec: AnyEstimator) -> str:
    return spec.display
