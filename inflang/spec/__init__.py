"""Pydantic models of a study file, one module per section."""

from inflang.spec.dataset import (
    BUNDLED,
    AnyDataset,
    BundledDataset,
    DatasetInfo,
    DatasetSpec,
    FileDataset,
    ImageFolderDataset,
    SyntheticDataset,
)
from inflang.spec.diagnostics import CurvatureSettings, DiagnosticsSpec
from inflang.spec.estimators import (
    AnyEstimator,
    ArnoldiEstimator,
    CgEstimator,
    DataInfEstimator,
    EkfacEstimator,
    EstimatorSpec,
    ExactEstimator,
    GradCosEstimator,
    GradDotEstimator,
    KfacEstimator,
    LissaEstimator,
    RepresenterEstimator,
    TracinEstimator,
    TrakEstimator,
    estimator_label,
)
from inflang.spec.model import (
    IMAGE_ARCHS,
    AnyModel,
    CnnModel,
    LenetModel,
    LogregModel,
    MlpModel,
    ModelSpec,
    ResnetModel,
    VggModel,
)
from inflang.spec.protocols import (
    AnyProtocol,
    BrittlenessProtocol,
    GroundTruthSpec,
    GroupProtocol,
    GroupSpec,
    LdsProtocol,
    LooProtocol,
    PbrfProtocol,
    RemovalSpec,
)
from inflang.spec.selection import HessianSpec, MetricName, MetricsSpec, TestPointSpec
from inflang.spec.study import Study, semantic_problems, study_facts
from inflang.spec.training import EarlyStoppingSpec, TrainingSpec

__all__ = [
    "ImageFolderDataset",
    "ResnetModel", "VggModel",
    "DataInfEstimator", "RepresenterEstimator", "TracinEstimator", "KfacEstimator", "EkfacEstimator", "TrakEstimator",
    "BrittlenessProtocol", "CurvatureSettings", "DiagnosticsSpec",
    "AnyDataset", "AnyEstimator", "AnyModel", "AnyProtocol", "ArnoldiEstimator", "BUNDLED", "BundledDataset",
    "CgEstimator", "CnnModel", "DatasetInfo", "DatasetSpec", "EstimatorSpec",
    "ExactEstimator", "FileDataset", "GradCosEstimator", "GradDotEstimator", "GroundTruthSpec",
    "GroupProtocol", "GroupSpec", "HessianSpec", "IMAGE_ARCHS", "LdsProtocol", "LenetModel", "LissaEstimator",
    "LogregModel", "LooProtocol", "MetricName", "MetricsSpec", "MlpModel", "ModelSpec", "PbrfProtocol",
    "RemovalSpec", "Study", "SyntheticDataset", "TestPointSpec", "TrainingSpec", "EarlyStoppingSpec", "estimator_label",
    "semantic_problems", "study_facts",
]
