"""Pydantic models of a study file, one module per section."""

from inflang.spec.dataset import BUNDLED, BundledDataset, DatasetInfo, DatasetSpec
from inflang.spec.estimators import (
    ESTIMATOR_NAMES,
    AnyEstimator,
    ArnoldiEstimator,
    CgEstimator,
    EstimatorSpec,
    ExactEstimator,
    GradCosEstimator,
    GradDotEstimator,
    LissaEstimator,
    estimator_label,
)
from inflang.spec.model import LogregModel, MlpModel, ModelSpec
from inflang.spec.protocols import (
    AnyProtocol,
    GroundTruthSpec,
    GroupProtocol,
    GroupSpec,
    LdsProtocol,
    LooProtocol,
    PbrfProtocol,
    RemovalSpec,
)
from inflang.spec.selection import HessianSpec, MetricName, MetricsSpec, TestPointSpec
from inflang.spec.study import Study, ranking_estimator, semantic_problems
from inflang.spec.training import TrainingSpec

__all__ = [
    "AnyEstimator", "ArnoldiEstimator", "CgEstimator", "GradCosEstimator", "GradDotEstimator", "LissaEstimator",
    "BUNDLED", "BundledDataset", "DatasetInfo", "DatasetSpec", "ESTIMATOR_NAMES", "EstimatorSpec",
    "ExactEstimator", "GroundTruthSpec", "HessianSpec", "LogregModel", "LooProtocol", "MetricName", "MetricsSpec",
    "MlpModel", "ModelSpec", "RemovalSpec", "Study", "TestPointSpec", "TrainingSpec", "estimator_label",
    "semantic_problems", "AnyProtocol", "GroupProtocol", "GroupSpec", "LdsProtocol", "PbrfProtocol",
    "ranking_estimator",
]
