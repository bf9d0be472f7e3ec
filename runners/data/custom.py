"""A study's own dataset (``dataset: {name: custom, loader: module:callable}``): the rows its loader returns,
checked by ``runners.custom``."""

from __future__ import annotations

from inflang.spec import CustomDataset
from runners.custom import CodeError, loaded
from runners.data.split import RawData
from runners.errors import TaskFailure


def load_custom(spec: CustomDataset) -> RawData:
    """``runners.data`` loader: the rows the study's loader returns (row id = position)."""
    try:
        x, y, classes = loaded(spec)
    except CodeError as exc:
        raise TaskFailure(f"dataset.loader: {exc}") from None
    return RawData(x=x, y=y, classes=classes)
