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
from inflang.spec.protocols import GroundTruthSpec, LooProtocol, RemovalSpec
from inflang.spec.selection import HessianSpec, MetricName, TestPointSpec
from inflang.spec.study import Study, semantic_problems
from inflang.spec.training import TrainingSpec

__all__ = [
    "AnyEstimator", "ArnoldiEstimator", "CgEstimator", "GradCosEstimator", "GradDotEstimator", "LissaEstimator",
    "BUNDLED", "BundledDataset", "DatasetInfo", "DatasetSpec", "ESTIMATOR_NAMES", "EstimatorSpec",
    "ExactEstimator", "GroundTruthSpec", "HessianSpec", "LogregModel", "LooProtocol", "MetricName",
    "MlpModel", "ModelSpec", "RemovalSpec", "Study", "TestPointSpec", "TrainingSpec", "estimator_label",
    "semantic_problems",
]
