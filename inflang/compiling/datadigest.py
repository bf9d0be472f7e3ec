"""What a file dataset *is*, for task hashes: its files' names (relative to ``root``), sizes and contents,
not the folder they lie in. Moving the data folder or cloning the project elsewhere then reuses every
finished task, and changing a file reruns what depends on it.

A file's content digest (sha256) is computed once and kept in a small cache keyed by the file's absolute
path, size and modification time (``$XDG_CACHE_HOME/inflang/digests.json``, else ``~/.cache/...``; the
``INFLANG_CACHE`` variable names another folder), so a large image folder is read once, not at every plan.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from inflang.spec import FileDataset
from inflang.spec.dataset import AnyDataset, ImageFolderDataset, expected_files, scan_folder


def cache_file() -> Path:
    folder = os.environ.get("INFLANG_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "inflang")
    return Path(folder) / "digests.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DigestCache:
    """File digests by (absolute path, size, mtime): read once, written back when something was added."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_file()
        try:
            self.entries: dict[str, list[object]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.changed = False

    def digest(self, file: Path) -> str:
        stat = file.stat()
        key = str(file.resolve())
        known = self.entries.get(key)
        if isinstance(known, list) and known[:2] == [stat.st_size, stat.st_mtime_ns]:
            return str(known[2])
        value = _sha256(file)
        self.entries[key] = [stat.st_size, stat.st_mtime_ns, value]
        self.changed = True
        return value

    def save(self) -> None:
        """Write the cache atomically; a cache that cannot be written is only a lost speed-up."""
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".digests-")
            with os.fdopen(fd, "w") as fh:
                json.dump(self.entries, fh)
            os.replace(tmp, self.path)
        except OSError:
            return


def dataset_files(spec: AnyDataset) -> list[Path]:
    """The files a file or image-folder dataset reads, in a fixed order ([] for bundled and synthetic data,
    which are identified by their fields alone)."""
    if isinstance(spec, ImageFolderDataset):
        layout = scan_folder(spec.root)
        return [Path(p) for p, _ in layout.train + (layout.test or ())]
    if isinstance(spec, FileDataset):
        root = Path(spec.root)
        files, _ = expected_files(spec.name)
        found = []
        for name in files:
            candidate = next((root / c for c in (name, name + ".gz", Path(name).name) if (root / c).is_file()), None)
            if candidate is not None:
                found.append(candidate)
        return found
    return []


def dataset_digest(spec: AnyDataset, cache: DigestCache | None = None) -> str | None:
    """sha256 over (name relative to root, size, content digest) of every file the dataset reads; None for
    datasets without files."""
    files = dataset_files(spec)
    if not files:
        return None
    own = cache is None
    cache = cache or DigestCache()
    root = Path(getattr(spec, "root", None) or ".")
    listing = []
    for f in files:
        try:
            relative = str(f.relative_to(root))
        except ValueError:
            relative = f.name
        listing.append([relative, f.stat().st_size, cache.digest(f)])
    if own:
        cache.save()
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()
