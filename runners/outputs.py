"""What each task kind produces, in one place: a dataclass per kind, saved as a flat dict of tensors (the
artifact) by ``to_arrays`` and read back by ``from_arrays``. Nothing outside this module knows how an
artifact's keys are spelled.

- ``TrainedModel`` (train): final parameters and running statistics, the initial ones, and the checkpoints
  kept for TracIn (learning rate, parameters, running statistics);
- ``Curvature`` (curvature): the eigendecomposition of the Hessian or Gauss-Newton matrix;
- ``HessianDiagnostics`` (hessian): the top eigenvalues;
- ``Estimate`` (estimate): scores [T, n] for the selected test points (positions and row ids);
- ``MeasuredEffects`` (ground_truth): actual effects [T, K], the test points, the groups' members when
  items are groups, the resolution, the decomposition's other responses and protocol-specific arrays.
The metrics task produces rows only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

Arrays = dict[str, Tensor]


def _prefixed(arrays: Arrays, prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _with_prefix(prefix: str, tensors: dict[str, Tensor]) -> Arrays:
    return {f"{prefix}{k}": v for k, v in tensors.items()}


@dataclass
class Checkpoint:
    lr: float  # the learning rate of the step after which it was taken
    params: dict[str, Tensor]
    buffers: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class TrainedModel:
    params: dict[str, Tensor]
    init: dict[str, Tensor]
    buffers: dict[str, Tensor] = field(default_factory=dict)  # running statistics (BatchNorm)
    init_buffers: dict[str, Tensor] = field(default_factory=dict)
    checkpoints: list[Checkpoint] = field(default_factory=list)

    @property
    def state(self) -> dict[str, Tensor]:
        """Parameters and running statistics together (what an evaluation-mode forward pass needs)."""
        return {**self.params, **self.buffers}

    @property
    def initial_state(self) -> dict[str, Tensor]:
        return {**self.init, **self.init_buffers}

    def to_arrays(self) -> Arrays:
        arrays = {**_with_prefix("param.", self.params), **_with_prefix("init.", self.init),
                  **_with_prefix("buffer.", self.buffers), **_with_prefix("initbuffer.", self.init_buffers)}
        for c, checkpoint in enumerate(self.checkpoints):
            arrays.update(_with_prefix(f"ckpt{c}.", checkpoint.params))
            arrays.update(_with_prefix(f"ckptbuffer{c}.", checkpoint.buffers))
        if self.checkpoints:
            arrays["ckpt_lr"] = torch.tensor([c.lr for c in self.checkpoints], dtype=torch.float64)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Arrays) -> TrainedModel:
        lrs = arrays["ckpt_lr"].tolist() if "ckpt_lr" in arrays else []
        checkpoints = [Checkpoint(float(lr), _prefixed(arrays, f"ckpt{c}."), _prefixed(arrays, f"ckptbuffer{c}."))
                       for c, lr in enumerate(lrs)]
        return cls(_prefixed(arrays, "param."), _prefixed(arrays, "init."), _prefixed(arrays, "buffer."),
                   _prefixed(arrays, "initbuffer."), checkpoints)


@dataclass
class Curvature:
    values: Tensor  # eigenvalues, ascending
    vectors: Tensor  # eigenvectors as columns

    def to_arrays(self) -> Arrays:
        return {"values": self.values, "vectors": self.vectors}

    @classmethod
    def from_arrays(cls, arrays: Arrays) -> Curvature:
        return cls(arrays["values"], arrays["vectors"])


@dataclass
class HessianDiagnostics:
    top: Tensor  # the largest eigenvalues, descending

    def to_arrays(self) -> Arrays:
        return {"top": self.top}

    @classmethod
    def from_arrays(cls, arrays: Arrays) -> HessianDiagnostics:
        return cls(arrays["top"])


@dataclass
class Estimate:
    scores: Tensor  # [T, n]: estimated change of each test point's measured quantity when point i is removed
    tests: Tensor  # [T] positions of the selected test points in the test split
    test_ids: Tensor  # [T] their dataset row ids

    def to_arrays(self) -> Arrays:
        return {"scores": self.scores, "tests": self.tests, "test_ids": self.test_ids}

    @classmethod
    def from_arrays(cls, arrays: Arrays) -> Estimate:
        return cls(arrays["scores"], arrays["tests"], arrays["test_ids"])


@dataclass
class MeasuredEffects:
    actual: Tensor  # [T, K] mean over repeats of measure(without item k) - measure(control); NaN: not measured
    tests: Tensor  # [T] positions of the selected test points in the test split
    members: Tensor | None = None  # [K, n] the training points item k removes (None: item k is point k)
    resolution: Tensor | None = None  # [T] the ground truth's resolution
    responses: dict[str, Tensor] = field(default_factory=dict)  # decomposition: converged_loo, pbrf [T, K]
    extra: dict[str, Tensor] = field(default_factory=dict)  # protocol-specific (brittleness: flip_k [S, T])

    def to_arrays(self) -> Arrays:
        arrays: Arrays = {"actual": self.actual, "tests": self.tests}
        if self.members is not None:
            arrays["members"] = self.members
        if self.resolution is not None:
            arrays["resolution"] = self.resolution
        arrays.update(_with_prefix("response.", self.responses))
        arrays.update(_with_prefix("extra.", self.extra))
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Arrays) -> MeasuredEffects:
        return cls(arrays["actual"], arrays["tests"], arrays.get("members"), arrays.get("resolution"),
                   _prefixed(arrays, "response."), _prefixed(arrays, "extra."))
