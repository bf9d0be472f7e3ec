"""``dataset:`` -- which data, how it is split and scaled.

A new dataset family is one model here (discriminated by ``name``) plus one loader in ``runners/data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, field_validator

from inflang.spec.base import Spec


@dataclass(frozen=True)
class DatasetInfo:
    """What the compiler knows about a dataset without loading it (sizes, for checks and cost)."""

    rows: int
    features: int
    classes: int


BUNDLED: dict[str, DatasetInfo] = {
    "iris": DatasetInfo(rows=150, features=4, classes=3),
    "digits": DatasetInfo(rows=1797, features=64, classes=10),
    "breast_cancer": DatasetInfo(rows=569, features=30, classes=2),
    "wine": DatasetInfo(rows=178, features=13, classes=3),
}


class BundledDataset(Spec):
    """A classification dataset shipped with scikit-learn (no download)."""

    name: Literal["iris", "digits", "breast_cancer", "wine"] = Field(
        description="iris | digits | breast_cancer | wine (scikit-learn's bundled copies)")
    test_size: int | float = Field(
        0.2, description="test points: an int (count) or a float in (0, 1) (fraction); stratified split")
    subsample: Annotated[int, Field(gt=0)] | None = Field(
        None, description="keep this many training points (seeded, stratified); null keeps all")
    standardize: bool = Field(True, description="z-score features with training-set statistics")
    root: str | None = Field(None, description="unused by bundled datasets; for file-based datasets")

    @field_validator("test_size", mode="before")
    @classmethod
    def _count_or_fraction(cls, value: object) -> object:
        ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 1) or (
            isinstance(value, float) and 0 < value < 1)
        if not ok:
            raise ValueError(f"must be a count (an int >= 1) or a fraction in (0, 1), got {value!r}")
        return value

    def info(self) -> DatasetInfo:
        return BUNDLED[self.name]

    def split_sizes(self) -> tuple[int, int]:
        """(n_train, n_test) after the split and subsampling, as the loader will produce them."""
        rows = self.info().rows
        n_test = self.test_size if isinstance(self.test_size, int) else int(round(self.test_size * rows))
        n_train = rows - n_test
        if self.subsample is not None:
            n_train = min(n_train, self.subsample)
        return n_train, n_test


DatasetSpec = BundledDataset
