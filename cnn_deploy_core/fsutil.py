"""Atomic file system writes: a crash leaves the old artefact or none, never half of one."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from cnn_deploy_core import CnnDeployError


def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` if needed and prove we can write there, with a clear error if not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise CnnDeployError(f"output directory {path} is not writable: {e.strerror or e}") from e
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """`data` into `path` through a temp file and a rename: a crash leaves the old file or none.
    `mode`: the file's permissions from the start (e.g. 0640 for a report that names a server);
    default, an ordinary file's (0666 less the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes 0600, so no moment exists where the file is readable by more than `mode`
        os.fchmod(fd, 0o666 & ~_umask() if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def make_staging_dir(parent: Path, name: str) -> Path:
    """A hidden sibling directory to build ``parent/name`` in; publish it with :func:`publish_dir`."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.staging-"))
    os.chmod(path, 0o777 & ~_umask())  # mkdtemp makes 0700
    return path


def publish_dir(staging: Path, final: Path) -> None:
    """Swap a fully written staging directory into place (two renames on one file system)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    try:
        os.replace(staging, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def discard(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
