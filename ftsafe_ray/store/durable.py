"""Atomic and durable file replacement: fsync the new file, rename it, fsync the directory.

A rename alone is atomic but not durable: after a power loss or kernel crash the file system may
have kept the rename but not the file's data, leaving a complete-looking name over zero or
garbage bytes. Syncing the data before the rename, and the directory entry after it, closes that
window on POSIX systems.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ftsafe_ray.errors import StoreError

# Directory fsync is not supported everywhere (some network and FUSE file systems answer
# EINVAL); the rename is still atomic there, only its durability is up to the file system.
_DIRECTORY_SYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES}


def fsync_file(path: Path) -> None:
    """Flush a written file's data and metadata to stable storage."""
    # Any descriptor of the file flushes its pages; read-only is enough on Linux and macOS,
    # which lets this follow writers (like pyarrow's) that own and close their own handle.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new name inside `directory` durable (POSIX; a no-op elsewhere)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as error:
        if error.errno in _DIRECTORY_SYNC_UNSUPPORTED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in _DIRECTORY_SYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def replace_durably(temporary: Path, path: Path) -> None:
    """Rename a fully written `temporary` over `path` so that after a crash `path` holds
    either its old content or all of the new, never a torn or empty file."""
    fsync_file(temporary)
    os.replace(temporary, path)
    fsync_directory(Path(path).parent)


def write_error(where: Path, error: OSError) -> StoreError:
    """A failed write in the run directory (disk full, quota, read-only or unwritable) in one
    line: nothing already written is touched, and a rerun resumes from what exists."""
    reason = error.strerror or str(error).strip().splitlines()[0] or type(error).__name__
    return StoreError(
        f"{where}: cannot write ({reason}); free disk space or make the directory writable, "
        "then rerun the same command: what is already written is intact"
    )
