"""Blob storage on the filesystem and the package receiver: staged bytes are invisible until committed
under their content address, discarded on any refusal, and a package stops at the size limit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from miniapps.blobs import FilesystemBlobStore, package_key
from miniapps.models import PackageTooLarge
from miniapps.versions import PackageReceiver


def staged_files(root: Path) -> list[Path]:
    return list((root / "tmp").glob("*.part")) if (root / "tmp").exists() else []


async def test_commit_makes_the_blob_readable_under_its_key(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    staged = store.stage()
    await staged.write(b"hello ")
    await staged.write(b"world")
    key = package_key(hashlib.sha256(b"hello world").hexdigest())
    assert not await store.exists(key)
    await staged.commit(key)
    assert await store.read(key) == b"hello world" and staged_files(tmp_path) == []
    await staged.discard()  # after commit: nothing to do
    assert await store.exists(key)
    # The same content again: the blob stays, the second staging is cleaned up.
    again = store.stage()
    await again.write(b"hello world")
    await again.commit(key)
    assert await store.read(key) == b"hello world" and staged_files(tmp_path) == []
    await store.delete(key)
    assert not await store.exists(key)
    with pytest.raises(FileNotFoundError):
        await store.read(key)


async def test_discard_leaves_nothing(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    staged = store.stage()
    await staged.write(b"x" * 1000)
    assert len(staged_files(tmp_path)) == 1
    await staged.discard()
    assert staged_files(tmp_path) == []
    with pytest.raises(RuntimeError):
        await staged.write(b"more")


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "packages/../../x", "Packages/x", ""])
def test_keys_stay_inside_the_store(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="not a blob key"):
        FilesystemBlobStore(tmp_path).path_of(key)


async def test_receiver_hashes_counts_and_stops_at_the_limit(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    receiver = PackageReceiver(store, max_bytes=10)
    await receiver.feed(b"12345")
    await receiver.feed(b"67890")
    received = receiver.finish()
    assert received.size == 10 and received.sha256 == hashlib.sha256(b"1234567890").hexdigest()
    await received.staged.commit(package_key(received.sha256))
    assert await store.read(package_key(received.sha256)) == b"1234567890"

    over = PackageReceiver(store, max_bytes=10)
    await over.feed(b"123456")
    with pytest.raises(PackageTooLarge) as refused:
        await over.feed(b"78901")
    assert refused.value.status == 413 and refused.value.code == "package_too_large"
    assert refused.value.field == "package"
    assert staged_files(tmp_path) == []
