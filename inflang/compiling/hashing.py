"""Canonical JSON, content hashes and derived seeds: stable across runs, processes and machines."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def canonical_hash(value: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of sha256 over the canonical JSON of ``value``."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from a master seed and labels, e.g. derive_seed(cell_seed, "split")."""
    return int(hashlib.sha256(canonical_json(list(parts)).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF
