"""Where a Zarr store lives: a local folder or a prefix in any store fsspec reaches.

:class:`StoreLocation` names a store (``s3://bucket/masks.zarr``, ``gs://...``, ``az://...``,
``memory://...``, ``file://...`` or a plain path) with its ``storage_options`` and does the few
object operations the writer needs, each on one key: read, write (one PUT on an object store;
written aside and renamed into place on a local disk, so a file is never half there), create
only if absent (``If-None-Match: *`` on S3, ``O_EXCL`` locally), replace only if unchanged
(``If-Match`` on S3), delete and list. It is a small frozen dataclass, so it travels to Dask
workers; each process makes its own file system object from it (fsspec caches one per set of
options).

Object stores answer transient errors (503 SlowDown, timeouts) through the retries of their
own client: for S3 pass botocore's settings in ``storage_options``, e.g.
``{"config_kwargs": {"retries": {"max_attempts": 10, "mode": "adaptive"},
"read_timeout": 30}}``; s3fs retries what botocore leaves (``"retries"``, default 5).
"""

from __future__ import annotations

import builtins
import contextlib
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._optional import import_optional
from ..errors import OptionalDependencyError, StoreWriteError, ZarrStoreError

__all__ = ["StoreLocation", "StoreWriteError", "store_location"]

_LOCAL_PROTOCOLS = ("file", "local")


@dataclass(frozen=True)
class StoreLocation:
    """A store: ``url`` (an absolute local path, or ``protocol://...``) and its options.

    Attributes
    ----------
    url
        For a local store its absolute path (no ``file://``); else the URL, without a trailing
        slash.
    storage_options
        Keyword arguments of the fsspec file system (``endpoint_url``, ``key``, ``secret``,
        ``anon``, ``config_kwargs``...); unused for a local store.
    """

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    # -- naming -----------------------------------------------------------------------------

    @property
    def local(self) -> bool:
        """True for a folder on a local disk."""
        return "://" not in self.url

    @property
    def protocol(self) -> str:
        """The URL's protocol (``file`` for local paths)."""
        return "file" if self.local else self.url.split("://", 1)[0]

    @property
    def name(self) -> str:
        """The last part of the path (``masks.zarr``)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def child(self, *parts: str) -> StoreLocation:
        """The location ``parts`` below this one (same options)."""
        joined = "/".join(p.strip("/") for p in parts if p)
        return StoreLocation(f"{self.url}/{joined}" if joined else self.url,
                             dict(self.storage_options))

    def sibling(self, name: str) -> StoreLocation:
        """A location beside this one (``masks.zarr`` -> ``masks.json``)."""
        parent = self.url.rstrip("/").rsplit("/", 1)[0]
        return StoreLocation(f"{parent}/{name}", dict(self.storage_options))

    def __str__(self) -> str:
        return self.url

    # -- the file system --------------------------------------------------------------------

    @property
    def fs(self) -> Any:
        """The (synchronous) fsspec file system of the store."""
        fsspec = import_optional("fsspec", extra="cloud")
        if self.local:
            return fsspec.filesystem("file")
        try:
            return fsspec.filesystem(self.protocol, **dict(self.storage_options))
        except ImportError as error:
            raise OptionalDependencyError(
                f"writing to {self.protocol}:// needs a package fsspec names: {error} "
                "(for S3: pip install 'xcloud[cloud]')"
            ) from error
        except ValueError as error:
            raise ZarrStoreError(f"{self.url!r}: unknown storage protocol {self.protocol!r} "
                                 f"({error})") from error

    @property
    def path(self) -> str:
        """The path as the file system names it (no protocol)."""
        return self.url if self.local else self.fs._strip_protocol(self.url)

    def key(self, relative: str) -> str:
        """File system path of ``relative`` (``a/b``) below the store."""
        return f"{self.path.rstrip('/')}/{relative}" if relative else self.path

    def zarr_store(self) -> Any:
        """What zarr and xarray open: the local path, or a zarr ``FsspecStore``."""
        if self.local:
            return self.url
        zarr = import_optional("zarr", extra="geo")
        return zarr.storage.FsspecStore.from_url(
            self.url, storage_options=dict(self.storage_options) or None, read_only=False)

    # -- objects ----------------------------------------------------------------------------

    def _fresh(self, relative: str) -> Any:
        fs = self.fs
        if not self.local:
            fs.invalidate_cache(self.key(relative))
        return fs

    def read(self, relative: str) -> bytes | None:
        """The object's bytes, or None if there is none (one GET)."""
        fs = self._fresh(relative)
        try:
            return bytes(fs.cat_file(self.key(relative)))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def etag(self, relative: str) -> str | None:
        """The object's ETag where the store has them (S3), else None."""
        try:
            info = self._fresh(relative).info(self.key(relative))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return info.get("ETag")

    def exists(self, relative: str) -> bool:
        """Whether the object at ``relative`` exists (not from a stale listing)."""
        return bool(self._fresh(relative).exists(self.key(relative)))

    def write(self, relative: str, data: bytes) -> None:
        """Write an object whole: one PUT, or locally a file renamed into place."""
        target = self.key(relative)
        if self.local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            if not data:  # an empty marker cannot be half written
                Path(target).touch()
                return
            tmp = f"{target}.{uuid.uuid4().hex}.partial"
            Path(tmp).write_bytes(data)
            os.replace(tmp, target)
            return
        self.fs.pipe_file(target, data)

    def create(self, relative: str, data: bytes) -> bool:
        """Write the object only if it does not exist; False if it did.

        ``If-None-Match: *`` on S3 (and stores whose fsspec file system implements exclusive
        creation), ``O_EXCL`` locally: of two processes creating one key, one wins.
        """
        target = self.key(relative)
        fs = self.fs
        if self.local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        try:
            fs.pipe_file(target, data, mode="create")
        except FileExistsError:
            return False
        if not self.local:
            fs.invalidate_cache(target)
        return True

    def replace(self, relative: str, data: bytes, etag: str | None) -> bool:
        """Overwrite the object if it still has ``etag`` (``If-Match`` on S3); False if not.

        Stores without conditional writes (``etag`` None) overwrite unconditionally: the
        caller re-reads the object just before.
        """
        target = self.key(relative)
        if etag is None or self.protocol not in ("s3", "s3a"):
            self.write(relative, data)
            return True
        try:
            self.fs.pipe_file(target, data, IfMatch=etag)
        except OSError as error:
            if "pre-condition" in str(error) or "PreconditionFailed" in str(error):
                return False
            raise
        return True

    def delete(self, relative: str) -> None:
        """Delete one object (nothing if it is not there)."""
        fs = self._fresh(relative)
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(self.key(relative))

    def delete_tree(self, relative: str = "", *, keep: tuple[str, ...] = ()) -> None:
        """Delete everything below ``relative`` except the top-level names in ``keep``."""
        for name in self.list(relative):
            if name in keep:
                continue
            target = self.key(f"{relative}/{name}" if relative else name)
            fs = self.fs
            with contextlib.suppress(FileNotFoundError):
                if fs.isdir(target):
                    fs.rm(target, recursive=True)
                else:
                    fs.rm_file(target)
        if self.local and relative:
            _remove_empty_folders(Path(self.key(relative)))

    def list(self, relative: str = "") -> list[str]:
        """Names directly below ``relative`` (files and 'folders'), [] if none.

        A listing may miss what another process writes at that moment; the writer reads
        state by key where a miss would matter.
        """
        fs = self._fresh(relative)
        try:
            entries = fs.ls(self.key(relative), detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        base = self.key(relative).rstrip("/")
        names = [e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != base]
        return sorted(set(names))

    def find(self, relative: str) -> builtins.list[str]:
        """Paths (relative to ``relative``) of every object below it."""
        fs = self._fresh(relative)
        base = self.key(relative).rstrip("/")
        try:
            found = fs.find(base)
        except FileNotFoundError:
            return []
        return sorted(p[len(base) + 1:] for p in found if p.startswith(base + "/"))

    def remove_empty(self, relative: str) -> None:
        """Locally, delete the folder ``relative`` and its parents below the store if empty."""
        if self.local:
            _remove_empty_folders(Path(self.key(relative)), stop=Path(self.path))


def _remove_empty_folders(folder: Path, stop: Path | None = None) -> None:
    """Remove ``folder`` if it holds only empty folders; then its parents up to ``stop``."""
    if not folder.is_dir():
        return
    for child in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if child.is_dir():
            with contextlib.suppress(OSError):
                child.rmdir()
    current = folder
    while stop is None or current != stop:
        try:
            current.rmdir()
        except OSError:
            return
        if stop is None:
            return
        current = current.parent


def store_location(store: str | os.PathLike[str] | StoreLocation,
                   storage_options: Mapping[str, Any] | None = None) -> StoreLocation:
    """A :class:`StoreLocation` of a path or URL (``file://`` becomes a local path).

    Parameters
    ----------
    store
        A local path, a ``file://`` URL, or an fsspec URL (``s3://bucket/masks.zarr``,
        ``gs://``, ``az://``, ``memory://``...).
    storage_options
        Options of the fsspec file system; not allowed with a local path.

    Returns
    -------
    StoreLocation

    Raises
    ------
    ZarrStoreError
        ``storage_options`` given for a local path, or a URL without a path.
    """
    if isinstance(store, StoreLocation):
        if storage_options:
            return StoreLocation(store.url, {**store.storage_options, **storage_options})
        return store
    text = os.fspath(store)
    protocol = text.split("://", 1)[0].lower() if "://" in text else None
    if protocol in _LOCAL_PROTOCOLS:
        text = text.split("://", 1)[1]
        protocol = None
    if protocol is None:
        if storage_options:
            raise ZarrStoreError(f"storage_options were given for the local path {text!r}; "
                                 "they are for URLs such as s3://bucket/masks.zarr")
        return StoreLocation(str(Path(text).expanduser().resolve()))
    rest = text.split("://", 1)[1].strip("/")
    if not rest:
        raise ZarrStoreError(f"store {text!r} names no bucket or path")
    return StoreLocation(f"{protocol}://{rest}", dict(storage_options or {}))
