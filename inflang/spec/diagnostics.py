"""``diagnostics:`` -- the study's health checks and their thresholds (docs/language.md, "Diagnostics").

Every cell is checked after a run for regimes in which its numbers mean less than they seem to: damping that
swamps the curvature, a base model away from a stationary point or in the interpolation regime, retraining
that did not converge, effects below the ground truth's resolution, a noise ceiling too low to judge by,
LiSSA recursions that stopped early, K-FAC over parameters it does not factor, Arnoldi keeping little of the
spectrum. Each check compares a value with a threshold here; the model's curvature comes from a ``diagnose``
task per trained model (Lanczos extremes and a Hutchinson trace on at most ``examples`` training points).
"""

from __future__ import annotations

from pydantic import Field

from inflang.spec.base import Spec


class DiagnosticsSpec(Spec):
    """Thresholds of the health checks (a check warns when its value crosses its threshold)."""

    curvature: bool = Field(True, description="compute each trained model's gradient norm and curvature (a "
                            "diagnose task per model); false: only the checks that need neither")
    examples: int = Field(512, ge=1, description="training points the curvature diagnostics use (the first ones "
                          "of a seeded permutation; all of them when there are fewer)")
    iterations: int = Field(20, ge=2, le=500, description="Lanczos steps for the extreme eigenvalues")
    trace_samples: int = Field(8, ge=1, le=1000, description="Rademacher probes for the Hutchinson trace")
    damping_ratio: float = Field(1.0, gt=0, description="damping / the Hessian's top eigenvalue at or above which "
                                 "an estimator's damping dominates the curvature it regularises")
    gradient_norm: float = Field(1e-3, gt=0, description="the training objective's gradient norm at the trained "
                                 "model above which it is not at a stationary point (for estimators that assume one)")
    train_loss: float = Field(1e-3, gt=0, description="training loss below which, with a top eigenvalue below "
                              "'curvature_floor', the model interpolates its training data")
    curvature_floor: float = Field(1e-2, gt=0, description="top eigenvalue below which the Hessian counts as "
                                   "near 0 (interpolation check)")
    retrain_gradient: float = Field(0.1, gt=0, description="warm-start retraining: median over removals of the "
                                    "final / initial gradient norm above which retraining has not converged")
    below_resolution: float = Field(0.1, ge=0, le=1, description="fraction of effects below the ground truth's "
                                    "resolution above which it cannot resolve what it measures")
    noise_ceiling: float = Field(0.5, ge=0, le=1, description="noise ceiling (Spearman) below which the ground "
                                 "truth does not reproduce itself well enough to judge an estimator")
    lissa_residual: float = Field(0.01, gt=0, le=1, description="LiSSA: the slowest eigen-direction's remaining "
                                  "error factor |1 - (lambda_min + damping) / scale| ^ depth above which the "
                                  "recursion stopped early")
    arnoldi_mass: float = Field(0.5, gt=0, le=1, description="Arnoldi: share of the Hessian's trace held by the "
                                "kept eigenvalues below which few directions carry the estimate")
    kfac_uncovered: float = Field(0.0, ge=0, le=1, description="K-FAC/EK-FAC: share of the selected parameters "
                                  "outside Linear/Conv2d layers above which it ignores part of the model")

    def curvature_settings(self) -> CurvatureSettings:
        """What the diagnose task reads (its hash covers these, not the thresholds)."""
        return CurvatureSettings(examples=self.examples, iterations=self.iterations, trace_samples=self.trace_samples)


class CurvatureSettings(Spec):
    """The inputs of a diagnose task: how the trained model's curvature is estimated."""

    examples: int
    iterations: int
    trace_samples: int
