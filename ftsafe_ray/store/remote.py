"""Run directories, datasets and models on object storage (`s3://`, `gs://`), through pyarrow.

Object stores have no rename, so the local guarantee (write a hidden file, rename it into place)
becomes the store's own: a single object appears only once its upload completes (a PUT, or the
completion of a multipart upload), never half-written. Each shard and JSON file is therefore one
object, uploaded after it was written whole; a directory of files we upload (an adapter, an
aligned model) opens with one marker object and is complete only once a second, uploaded last,
exists. A directory with neither marker was uploaded by someone else (a user's model or data,
`aws s3 sync`): it is taken as it stands.

The driver works in a local mirror of the run directory (node-local disk, see `mirror_path`):
it reads the tables there, and every file it writes there is published to the store at once. A
rerun on any machine starts by copying the store's tables and records into its mirror. Actors on
other nodes fetch the adapters and models they need once per node into a local cache
(`materialize`) and upload what they train.

Credentials come from the environment or the instance role (pyarrow's AWS/GCS default chains);
`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` point `s3://` at an S3-compatible server.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

import pyarrow.fs as pafs

from ftsafe_ray.errors import StoreError
from ftsafe_ray.store.private import private_mkdir

SCHEMES = ("s3://", "gs://", "gcs://")
COMPLETE_MARKER = "_FTSAFE_COMPLETE"
STARTED_MARKER = "_FTSAFE_UPLOADING"  # first object of a tree we upload: ours, maybe cut off
CACHE_ENV = "FTSAFE_CACHE_DIR"


def is_remote(location: str | Path) -> bool:
    """Whether `location` names object storage rather than a local path."""
    return isinstance(location, str) and location.startswith(SCHEMES)


def cache_root() -> Path:
    """This node's cache for mirrors and fetched objects ($FTSAFE_CACHE_DIR)."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "ftsafe_ray"


def _digest(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:20]


def mirror_path(uri: str) -> Path:
    """The local mirror the driver of run directory `uri` works in."""
    return cache_root() / "runs" / f"{uri.rstrip('/').rsplit('/', 1)[-1]}-{_digest(uri)}"


@lru_cache(maxsize=8)
def _filesystem(scheme: str, endpoint: str | None) -> pafs.FileSystem:
    if scheme == "s3":
        return pafs.S3FileSystem(endpoint_override=endpoint)
    return pafs.GcsFileSystem()


def split_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the bucket/key path of an object-storage URI."""
    scheme, _, path = uri.partition("://")
    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return _filesystem("s3", endpoint or None), path.rstrip("/")
    return _filesystem("gs", None), path.rstrip("/")


def _fail(what: str, uri: str, error: Exception) -> StoreError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return StoreError(
        f"{uri}: cannot {what} ({reason}); check the bucket, its permissions and your "
        "credentials (environment or instance role), then rerun the same command"
    )


class RemoteDir:
    """A directory of an object store: files are published and fetched whole."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.fs, self.path = split_uri(self.uri)

    def join(self, relative: str) -> str:
        return f"{self.uri}/{relative}" if relative else self.uri

    def publish(self, local: Path, relative: str) -> None:
        """Upload one finished local file as one object (it appears whole or not at all)."""
        target = f"{self.path}/{relative}"
        try:
            pafs.copy_files(str(local), target, pafs.LocalFileSystem(), self.fs, use_threads=False)
        except OSError as error:
            raise _fail("upload", self.join(relative), error) from None

    def publish_tree(self, local_dir: Path, relative: str) -> None:
        """Upload the marker that says the tree is ours, every file of `local_dir`, then the
        marker that says it is complete."""
        started = local_dir / STARTED_MARKER
        started.write_text("uploading\n")
        self.publish(started, f"{relative}/{STARTED_MARKER}")
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            self.publish(path, f"{relative}/{path.relative_to(local_dir).as_posix()}")
        marker = local_dir / COMPLETE_MARKER
        marker.write_text("complete\n")
        self.publish(marker, f"{relative}/{COMPLETE_MARKER}")

    def delete(self, relative: str) -> None:
        """Remove one object if it exists."""
        try:
            if self.exists(relative):
                self.fs.delete_file(f"{self.path}/{relative}")
        except OSError as error:
            raise _fail("delete", self.join(relative), error) from None

    def has_tree(self, relative: str) -> bool:
        """Whether a tree was published completely (its marker exists)."""
        return self.exists(f"{relative}/{COMPLETE_MARKER}")

    def is_foreign_tree(self, relative: str) -> bool:
        """Whether `relative` is a directory of objects that we did not upload (no marker of
        ours): a user's model or data, complete as far as we can tell."""
        if self.exists(f"{relative}/{STARTED_MARKER}") or self.is_file(relative):
            return False
        return bool(self.files(relative))

    def exists(self, relative: str) -> bool:
        """Whether an object (or a "directory": a prefix of objects) exists."""
        return self._type(relative) != pafs.FileType.NotFound

    def is_file(self, relative: str) -> bool:
        """Whether `relative` is one object."""
        return self._type(relative) == pafs.FileType.File

    def _type(self, relative: str) -> pafs.FileType:
        try:
            return self.fs.get_file_info(f"{self.path}/{relative}").type
        except OSError as error:
            raise _fail("read", self.join(relative), error) from None

    def files(self, relative: str = "") -> list[str]:
        """Paths (relative to this directory) of every object under `relative`."""
        base = f"{self.path}/{relative}".rstrip("/")
        try:
            infos = self.fs.get_file_info(
                pafs.FileSelector(base, recursive=True, allow_not_found=True)
            )
        except OSError as error:
            raise _fail("list", self.join(relative), error) from None
        prefix = f"{self.path}/"
        return sorted(info.path[len(prefix) :] for info in infos if info.type == pafs.FileType.File)

    def fetch(self, relative: str, local: Path) -> None:
        """Download one object to `local`, through a temporary sibling renamed into place."""
        private_mkdir(local.parent)
        temporary = local.with_name(f".inprogress-{uuid.uuid4().hex[:8]}-{local.name}")
        try:
            pafs.copy_files(
                f"{self.path}/{relative}",
                str(temporary),
                self.fs,
                pafs.LocalFileSystem(),
                use_threads=False,
            )
            os.replace(temporary, local)
        except OSError as error:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            raise _fail("download", self.join(relative), error) from None

    def mirror_into(self, local_root: Path, skip: Iterable[str] = ()) -> int:
        """Copy every object not yet in `local_root` (same relative path) there, except those
        under the top-level folders in `skip`; return how many were copied."""
        skipped = tuple(f"{name}/" for name in skip)
        copied = 0
        for relative in self.files():
            if relative.startswith(skipped):
                continue
            local = local_root / relative
            if not local.exists():
                self.fetch(relative, local)
                copied += 1
        return copied


def _cached(uri: str) -> Path:
    """This node's copy of `uri`: its own folder, keeping the object's name (and suffix)."""
    return cache_root() / "objects" / _digest(uri) / uri.rstrip("/").rsplit("/", 1)[-1]


@contextlib.contextmanager
def remote_output(location: str) -> Iterator[Path]:
    """A local directory to build a tree in (an adapter, an aligned model).

    For a local `location` it is that directory. For object storage it is a fresh directory of
    this node's cache: once the block ends without error, whatever was built there is published
    (its completion marker last) and kept as this node's copy, so nothing fetches it back.
    """
    if not is_remote(location):
        yield Path(location)
        return
    target = _cached(location)
    work = target.with_name(f".inprogress-{uuid.uuid4().hex[:8]}-{target.name}")
    private_mkdir(work.parent)
    try:
        yield work
        if work.is_dir():
            parent, _, name = location.rstrip("/").rpartition("/")
            RemoteDir(parent).publish_tree(work, name)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def materialize(uri: str) -> Path:
    """A local copy of a published tree (an adapter, a model) or file, fetched once per node.

    Concurrent callers on one node wait for one download (a lock file); a tree we began to
    upload but never marked complete is refused, so a half-uploaded adapter is never loaded.
    """
    if not is_remote(uri):
        return Path(uri)
    target = _cached(uri)
    if target.exists():
        return target
    private_mkdir(target.parent)
    with open(target.parent.parent / f".{target.parent.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        parent, _, name = uri.rstrip("/").rpartition("/")
        remote = RemoteDir(parent)
        if remote.has_tree(name) or remote.is_foreign_tree(name):
            work = target.with_name(f".inprogress-{target.name}")
            shutil.rmtree(work, ignore_errors=True)
            for relative in remote.files(name):
                remote.fetch(relative, work / relative[len(name) + 1 :])
            os.replace(work, target)
        elif remote.is_file(name):
            remote.fetch(name, target)
        else:
            raise StoreError(
                f"{uri}: no such object, or a directory not completely uploaded (an adapter or "
                "model whose upload was cut off: rerun the campaign to redo it); check the path"
            )
    return target
