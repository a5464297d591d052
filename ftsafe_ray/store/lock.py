"""An exclusive lock on a run directory, so two drivers never run a campaign into one store.

Two drivers on one run directory would train, generate and pay the judge for the same keys
twice and race on spec.json, plan.parquet and the manifest. `ftsafe run` (and the Ray job
script, both through `pipeline.run_campaign`) holds this lock for the whole run; `report`,
`status` and `plan` only read and take no lock.

Why `fcntl.flock` on `RUN_DIR/.lock` rather than a lock file created with O_EXCL: the kernel
releases a flock when its holder dies, however it dies (SIGKILL, OOM killer, power loss of a
client of a network file system), so a stale lock needs no pid probing, which cannot tell a
dead pid from a reused one nor see processes on other hosts. A leftover `.lock` file without a
live flock is simply taken over. The file's JSON content (pid, host, started_at, campaign) only
names the holder in the error a second driver gets. On Linux, flock on NFS is carried out as
a POSIX lock by the NFS client, so it also excludes drivers on other hosts sharing the volume.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from ftsafe_ray.errors import StoreError
from ftsafe_ray.store.private import FILE_MODE, private_mkdir

LOCK_FILE = ".lock"

# flock errors that mean "this file system cannot lock", not "someone holds the lock".
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}

logger = logging.getLogger(__name__)


class RunLock:
    """Hold `RUN_DIR/.lock` from `acquire` (or `with`) to `release`; a second holder fails at
    once with a one-line StoreError naming the first one."""

    def __init__(self, run_dir: str | Path, campaign: str = ""):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.campaign = campaign
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise StoreError; a lock whose holder died is taken over."""
        if self._fd is not None:
            return self
        try:
            private_mkdir(self.run_dir)
        except OSError as error:
            raise StoreError(
                f"{self.run_dir}: cannot create the run directory ({error.strerror})"
            ) from None
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd, patient=True)
                os.close(fd)
                raise StoreError(in_use_message(self.run_dir, holder)) from None
            except OSError as error:
                os.close(fd)
                if error.errno not in _NO_LOCKING:
                    raise StoreError(f"{self.path}: cannot lock ({error.strerror})") from None
                # Refusing would stop every run on such a volume; say what is unprotected.
                warnings.warn(
                    f"{self.path}: this file system cannot lock files ({error.strerror}); "
                    "running unlocked, so start no second driver on this run directory",
                    stacklevel=2,
                )
                return self
            # A releasing holder unlinks the file while still holding its flock; had we opened
            # it just before that, our flock is on a file no one else will open. Start over.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        previous = _read_holder(fd, patient=False)
        if previous:
            logger.info("%s: taking over a stale lock (%s)", self.path, _describe(previous))
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "campaign": self.campaign,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file, then drop the lock (in that order: see `acquire`)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    def _open(self) -> int:
        # os.open descriptors are not inherited by child processes (PEP 446), so Ray's
        # raylet and workers started by this driver never keep the lock alive after it.
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as error:
            raise StoreError(
                f"{self.path}: cannot open the run directory's lock ({error.strerror}); "
                "check the directory's permissions"
            ) from None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def in_use_message(run_dir: Path, holder: dict[str, Any]) -> str:
    """The one-line error a second driver gets."""
    return (
        f"{run_dir} is in use by {_describe(holder)}; wait for it or, if that process is "
        "gone, rerun — a stale lock is taken over automatically"
    )


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another driver (it has not recorded itself yet)"
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since "
        f"{holder.get('started_at', '?')} (campaign {holder.get('campaign') or '?'})"
    )


def _read_holder(fd: int, patient: bool) -> dict[str, Any]:
    """The holder's record, or {}. A live holder's file is empty between its flock and its
    write, so a `patient` read retries briefly before giving up on naming it."""
    for _ in range(10 if patient else 1):
        try:
            data = os.pread(fd, 4096, 0)
            record = json.loads(data) if data else None
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict):
            return record
        if patient:
            time.sleep(0.05)
    return {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)
