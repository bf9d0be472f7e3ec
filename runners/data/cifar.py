"""CIFAR-10 and CIFAR-100 from the python pickle batches under ``root``; nothing is downloaded.

Each batch is a pickled dict with b"data" (N x 3072 uint8, channel-major 3 x 32 x 32) and b"labels"
(CIFAR-10) or b"fine_labels" (CIFAR-100). Row ids: the training batches in order, then the test batch.
Only numpy arrays are unpickled (a restricted unpickler refuses every other class).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from inflang.spec import FileDataset
from inflang.spec.dataset import expected_files
from runners.data.idx import missing_files
from runners.data.split import RawData
from runners.errors import TaskFailure


class _ArraysOnly(pickle.Unpickler):
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("builtins", "list")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as fh:
        try:
            batch = _ArraysOnly(fh, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise TaskFailure(f"{path}: not a CIFAR python batch ({exc})") from None
    labels = batch.get(b"labels", batch.get(b"fine_labels"))
    if labels is None or b"data" not in batch:
        raise TaskFailure(f"{path}: a CIFAR batch needs b'data' and b'labels' (or b'fine_labels')")
    return np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def load_cifar(spec: FileDataset) -> RawData:
    root = Path(spec.root)
    files, _ = expected_files(spec.name)
    paths = []
    for f in files:
        nested, flat = root / f, root / Path(f).name
        paths.append(nested if nested.is_file() else flat if flat.is_file() else None)
    if any(p is None for p in paths):
        raise missing_files(spec)
    parts = [read_batch(p) for p in paths if p is not None]
    x = np.concatenate([p[0] for p in parts]).astype(np.float64) / 255.0
    y = np.concatenate([p[1] for p in parts])
    test = np.arange(len(y) - len(parts[-1][1]), len(y))
    return RawData(x=x, y=y, classes=10 if spec.name == "cifar10" else 100, fixed_test=test)
