"""Blob storage for mini-app packages: an interface, and a filesystem implementation under the data dir.

An upload is written to a staged blob first (nothing readable yet), then committed under its key in one
atomic step, or discarded. Keys are content addresses (`packages/ab/<sha256>`), so committing the same
package twice is harmless and the blob behind a key never changes. An object store (S3, OSS, MinIO) fits the
same interface: stage = multipart upload, commit = complete it under the key.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import secrets
from pathlib import Path
from typing import IO, Protocol

from core.settings import Settings

_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*(/[a-z0-9][a-z0-9_.-]*)*$")


def package_key(sha256_hex: str) -> str:
    return f"packages/{sha256_hex[:2]}/{sha256_hex}"


class StagedBlob(Protocol):
    async def write(self, chunk: bytes) -> None: ...

    async def commit(self, key: str) -> None:
        """Make the written bytes readable under `key`. A blob already there stays (same content)."""

    async def discard(self) -> None:
        """Forget the written bytes; safe to call after commit (then it does nothing)."""


class BlobStore(Protocol):
    def stage(self) -> StagedBlob: ...

    async def read(self, key: str) -> bytes:
        """The blob's bytes; FileNotFoundError when there is none."""

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None: ...


def _check_key(key: str) -> str:
    if not _KEY_RE.match(key) or ".." in key:
        raise ValueError(f"not a blob key: {key!r}")
    return key


class _FileStaged:
    def __init__(self, store: FilesystemBlobStore) -> None:
        self._store = store
        self._path = store.root / "tmp" / f"{secrets.token_hex(12)}.part"
        self._file: IO[bytes] | None = None
        self._done = False

    def _open(self) -> IO[bytes]:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        return self._path.open("wb")

    async def write(self, chunk: bytes) -> None:
        if self._done:
            raise RuntimeError("blob already committed or discarded")
        if self._file is None:
            self._file = await asyncio.to_thread(self._open)
        # Disk writes leave the event loop: a slow disk must not stall every other request.
        await asyncio.to_thread(self._file.write, chunk)

    def _commit(self, target: Path) -> None:
        if self._file is None:
            self._file = self._open()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            self._path.unlink(missing_ok=True)
        else:
            os.replace(self._path, target)

    async def commit(self, key: str) -> None:
        if self._done:
            raise RuntimeError("blob already committed or discarded")
        self._done = True
        await asyncio.to_thread(self._commit, self._store.path_of(key))

    def _discard(self) -> None:
        if self._file is not None:
            self._file.close()
        self._path.unlink(missing_ok=True)

    async def discard(self) -> None:
        if self._done:
            return
        self._done = True
        await asyncio.to_thread(self._discard)


class FilesystemBlobStore:
    """Blobs as files under `root` (one directory level of fan-out from the key)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, key: str) -> Path:
        return self.root / "objects" / _check_key(key)

    def stage(self) -> StagedBlob:
        return _FileStaged(self)

    async def read(self, key: str) -> bytes:
        return await asyncio.to_thread(self.path_of(key).read_bytes)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path_of(key).exists)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path_of(key).unlink, True)


@functools.cache
def _filesystem(root: str) -> FilesystemBlobStore:
    return FilesystemBlobStore(Path(root))


def blob_store_for(settings: Settings) -> BlobStore:
    """The configured blob storage: TONGBAN_MINIAPP_BLOB_DIR, else <data_dir>/blobs."""
    root = settings.miniapp_blob_dir or str(Path(settings.data_dir) / "blobs")
    return _filesystem(str(Path(root).resolve()))
