"""Owner-only files and directories for everything a run directory holds.

A run directory stores harmful requests, the answers fine-tuned models gave to them, judge
verdicts and adapters trained to comply. On a shared machine or volume the default umask
(022) would leave all of it readable by every user, so every writer creates its files and
directories for the owner alone; a user who means to share a run opens it with chmod.

A module of its own so the table writer and the run directory can both use it.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_mkdir(path: str | Path) -> Path:
    """Make `path` (and missing parents) with the directory itself owner-only.

    An existing directory keeps its mode: a user who opened a run to a group on purpose
    keeps it open across reruns. Missing parents get the default mode, since they may lie
    outside the run directory (e.g. a new `runs/` folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        return path
    # mkdir's mode is masked by the umask; chmod sets it whatever the umask is.
    os.chmod(path, DIR_MODE)
    return path


def open_private(path: str | Path, exclusive: bool = False) -> int:
    """Open `path` for writing as an owner-only file and return the descriptor.

    The mode is set at creation, so the content is never readable by others, not even for
    the moment between writing and a chmod; fchmod also fixes a leftover temporary file that
    an older version created with the default mode.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    descriptor = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(descriptor, FILE_MODE)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def restrict_tree(path: str | Path) -> None:
    """Make a directory tree written by a library (peft, transformers) owner-only.

    Those libraries create files with the default mode; call this after they finish and
    before the tree is renamed into the run directory. Symbolic links are left alone:
    chmod would change the file they point at, which may not be ours.
    """
    root = Path(path)
    if root.is_symlink():
        return
    if root.is_file():
        os.chmod(root, FILE_MODE)
        return
    os.chmod(root, DIR_MODE)
    for directory, subdirs, files in os.walk(root):
        for name in subdirs:
            entry = os.path.join(directory, name)
            if not os.path.islink(entry):
                os.chmod(entry, DIR_MODE)
        for name in files:
            entry = os.path.join(directory, name)
            if not os.path.islink(entry):
                os.chmod(entry, FILE_MODE)
