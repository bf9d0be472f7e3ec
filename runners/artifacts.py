"""Task artifacts: dicts of tensors under ``.inflang/artifacts/``, written atomically, verified on read.

Only tensors are stored (``torch.save`` of a flat dict, loaded with ``weights_only=True``): never modules.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor


def artifact_path(root: Path, task_hash: str) -> Path:
    return root / "artifacts" / task_hash[:2] / f"{task_hash}.pt"


def save(root: Path, task_hash: str, tensors: dict[str, Tensor]) -> str:
    """Write atomically (temp file, fsync, rename); returns the sha256 of the file's bytes."""
    path = artifact_path(root, task_hash)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


def load(root: Path, task_hash: str, sha256: str | None) -> dict[str, Tensor] | None:
    """The artifact's tensors, or None when it is missing or its bytes do not match ``sha256``."""
    path = artifact_path(root, task_hash)
    if not path.exists():
        return None
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        return None
    loaded = torch.load(io.BytesIO(data), weights_only=True)
    return dict(loaded)
