"""Atomic, never-overwriting file operations.

Runs, reports and deployed models must survive a kill at any instant: every file is
written to a temporary sibling and renamed into place, and nothing that already exists
is replaced.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

FILE_MODE = 0o644
"""Files the engine writes are readable by the team (as a plain ``open`` would make them, umask 022)."""


class AlreadyExistsError(FileExistsError):
    """Raised instead of overwriting a run, report or deployed model."""


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; ignore file systems that do not support it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` via a temporary file and a rename.

    With ``overwrite=False`` an existing file is never replaced (the link is atomic too).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)  # mkstemp makes files private (0600); reports and models are for the team
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _place(tmp, path, overwrite=overwrite)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def _place(tmp: Path, path: Path, *, overwrite: bool) -> None:
    """Move a finished temporary file to its final name."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError as exc:
        raise AlreadyExistsError(f"{path} exists and is never overwritten") from exc


def atomic_write_text(path: Path, text: str, *, overwrite: bool = False) -> Path:
    """Write UTF-8 text atomically (see ``atomic_write_bytes``)."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def atomic_copy(src: Path, dst: Path) -> Path:
    """Copy a file to ``dst`` atomically; never replaces an existing ``dst``."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        shutil.copyfile(src, tmp)
        _place(tmp, dst, overwrite=False)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(dst.parent)
    return dst


def make_unique_dir(parent: Path, stem: str) -> Path:
    """Create and return a new folder ``parent/stem`` (or ``stem-2``, ``stem-3``…), never reusing one."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = parent / (stem if n == 1 else f"{stem}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise AlreadyExistsError(f"no free folder name for {stem!r} under {parent}")


def write_text_once(path: Path, text: str) -> Path:
    """Write a file that is never overwritten, but let a resumed step write the very same content again.

    A step killed after writing its file but before recording that it finished writes it again on
    resume; identical content is accepted, anything else raises ``AlreadyExistsError``.
    """
    try:
        return atomic_write_text(path, text)
    except AlreadyExistsError:
        if Path(path).read_text(encoding="utf-8") == text:
            return Path(path)
        raise
