"""Pydantic models of a study file, one module per section."""

from inflang.spec.dataset import (
    BUNDLED,
    AnyDataset,
    BundledDataset,
    CustomDataset,
    DatasetInfo,
    DatasetSpec,
    FileDataset,
    ImageFolderDataset,
    Mnist1dDataset,
    SyntheticDataset,
)
from inflang.spec.diagnostics import CurvatureSettings, DiagnosticsSpec
from inflang.spec.estimators import (
    AnyEstimator,
    ArnoldiEstimator,
    CgEstimator,
    CustomEstimator,
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
    CustomModel,
    LenetModel,
    LogregModel,
    MlpModel,
    ModelFacts,
    ModelSpec,
    ResnetModel,
    TransformerModel,
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
from inflang.spec.training import EarlyStoppingSpec, PolishSpec, TrainingSpec

__all__ = [
    "ImageFolderDataset",
    "ResnetModel", "VggModel",
    "DataInfEstimator", "RepresenterEstimator", "TracinEstimator", "KfacEstimator", "EkfacEstimator", "TrakEstimator",
    "BrittlenessProtocol", "CurvatureSettings", "DiagnosticsSpec", "CustomDataset", "CustomEstimator", "CustomModel",
    "ModelFacts", "TransformerModel", "Mnist1dDataset",
    "AnyDataset", "AnyEstimator", "AnyModel", "AnyProtocol", "ArnoldiEstimator", "BUNDLED", "BundledDataset",
    "CgEstimator", "CnnModel", "DatasetInfo", "DatasetSpec", "EstimatorSpec",
    "ExactEstimator", "FileDataset", "GradCosEstimator", "GradDotEstimator", "GroundTruthSpec",
    "GroupProtocol", "GroupSpec", "HessianSpec", "IMAGE_ARCHS", "LdsProtocol", "LenetModel", "LissaEstimator",
    "LogregModel", "LooProtocol", "MetricName", "MetricsSpec", "MlpModel", "ModelSpec", "PbrfProtocol",
    "RemovalSpec", "Study", "SyntheticDataset", "TestPointSpec", "TrainingSpec", "EarlyStoppingSpec", "PolishSpec",
    "estimator_label",
    "semantic_problems", "study_facts",
]
