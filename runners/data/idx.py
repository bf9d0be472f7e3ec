"""MNIST-style IDX files (MNIST, Fashion-MNIST), gzipped or not, read from ``root``; nothing is downloaded.

IDX format: a big-endian header (two zero bytes, a type code, the number of dimensions, then each dimension
as a 32-bit integer) followed by the data. Row ids: the 60,000 training images, then the 10,000 test images.
small_mnist (Koh & Liang 2017): 5,000 training images held out for validation, a seeded 10% of the other
55,000 kept, and the full test set.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from inflang.compiling.hashing import derive_seed
from inflang.spec import FileDataset
from inflang.spec.dataset import expected_files
from runners.data.split import RawData
from runners.errors import TaskFailure

_TYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def missing_files(spec: FileDataset) -> TaskFailure:
    files, source = expected_files(spec.name)
    return TaskFailure(f"{spec.name}: files not found under {spec.root}: expected {', '.join(files)} "
                       f"(IDX files may end in .gz); obtain them from {source}")


def find(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (or its .gz) as a numpy array of the shape its header gives."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES:
        raise TaskFailure(f"{path}: not an IDX file (bad magic number)")
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    dtype = np.dtype(_TYPES[raw[2]])
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise TaskFailure(f"{path}: header says {shape} but the file holds {data.size} values")
    return data.reshape(shape)


def load_mnist(spec: FileDataset) -> RawData:
    root = Path(spec.root)
    files, _ = expected_files(spec.name)
    found = [find(root, f) for f in files]
    if any(f is None for f in found):
        raise missing_files(spec)
    train_x, train_y, test_x, test_y = (read_idx(f) for f in found if f is not None)
    if spec.name == "small_mnist":
        rng = np.random.default_rng(derive_seed("small_mnist"))
        order = rng.permutation(len(train_y))
        rest = order[5000:]  # the first 5,000 of a fixed permutation are the validation hold-out
        keep = np.sort(rng.choice(rest, size=len(rest) // 10, replace=False))
        train_x, train_y = train_x[keep], train_y[keep]
    x = np.concatenate([train_x, test_x]).astype(np.float64)[:, None] / 255.0
    y = np.concatenate([train_y, test_y]).astype(np.int64)
    test = np.arange(len(train_y), len(y))
    return RawData(x=x, y=y, classes=10, fixed_test=test)
