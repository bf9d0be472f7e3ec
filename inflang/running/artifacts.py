"""Task artifacts: one file of bytes per finished task under ``.inflang/artifacts/``, written atomically
(temporary file, fsync, rename) and checked against their recorded sha256 when read back. What the bytes
hold is the runner's business (``runners.entry`` serialises a task's tensors); the language side only
stores, verifies and hands them on.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def artifact_path(root: Path, task_hash: str) -> Path:
    return root / "artifacts" / task_hash[:2] / f"{task_hash}.pt"


def save(root: Path, task_hash: str, data: bytes) -> str:
    """Write atomically; returns the sha256 of the bytes."""
    path = artifact_path(root, task_hash)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def load(root: Path, task_hash: str, sha256: str | None) -> bytes | None:
    """The artifact's bytes, or None when it is missing or its bytes do not match ``sha256``."""
    path = artifact_path(root, task_hash)
    if not path.exists():
        return None
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        return None
    return data
