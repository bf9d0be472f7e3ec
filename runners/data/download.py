"""``download: true``: fetch a file dataset's missing files into its root before a run, from its mirror.

Files are written to a temporary name and renamed when complete, so an interrupted download leaves no
partial file that a later run would read; CIFAR archives are unpacked member by member, refusing any
member that is not a plain file or folder inside root. Each file is then read by the normal loader, which
checks its format.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from inflang.spec import FileDataset
from inflang.spec.dataset import MIRRORS, downloads, expected_files
from runners.errors import SetupError


class DownloadError(SetupError):
    """A dataset could not be fetched (the message says from where, and what to do instead)."""


def missing_files(spec: FileDataset) -> list[str]:
    root = Path(spec.root)
    return [f for f in expected_files(spec.name)[0]
            if not any((root / c).is_file() for c in (f, f + ".gz", Path(f).name))]


def _fetch(url: str, target: Path) -> None:
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unpack(archive: Path, root: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            path = (root / member.name).resolve()
            if not (member.isfile() or member.isdir()) or root.resolve() not in (path, *path.parents):
                raise DownloadError(f"{archive.name}: refusing archive member {member.name!r}")
        for member in tar.getmembers():
            path = root / member.name
            if member.isdir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with source, open(path, "wb") as out:
                shutil.copyfileobj(source, out)


def ensure_files(spec: FileDataset) -> list[str]:
    """Fetch what is missing (only with ``download: true``); returns the file names fetched."""
    if not spec.download or not missing_files(spec):
        return []
    root = Path(spec.root)
    root.mkdir(parents=True, exist_ok=True)
    mirror = spec.mirror or MIRRORS[spec.name]
    base = mirror if mirror.endswith("/") else mirror + "/"
    fetched = []
    for name in downloads(spec.name):
        target = root / name
        if name.endswith(".gz") and not name.endswith(".tar.gz") and (root / name[:-3]).is_file():
            continue
        url = base + name
        try:
            _fetch(url, target)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DownloadError(f"dataset {spec.name}: could not download {url} ({exc}); fetch the files into "
                                f"{root} by hand or set dataset.mirror") from None
        if name.endswith(".tar.gz"):
            _unpack(target, root)
            target.unlink()
        fetched.append(name)
    still = missing_files(spec)
    if still:
        raise DownloadError(f"dataset {spec.name}: after downloading from {base}, still missing "
                            f"{', '.join(still)} in {root}")
    return fetched
