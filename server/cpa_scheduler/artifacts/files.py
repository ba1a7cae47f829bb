"""Artifact bytes as files (the embedded mode): `data_dir/artifacts/<tenant>/<ab>/<sha256>`.

An upload is written to a temporary file under `data_dir/artifacts/tmp/`, fsynced, and renamed
into place at commit (then the directory is fsynced): a crash leaves either no file or the
whole one, and the temporary files of a crash are removed at the next start. Directories are
0700 and files 0600, like the rest of data_dir. File calls run on worker threads, so a slow
disk never stalls the event loop (the agents' streams, heartbeats included).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from cpa_scheduler.domain import check_sha256
from cpa_scheduler.storage.data_dir import FILE_MODE, make_private_directory

_TEMPORARY = "tmp"


def _tenant_directory(tenant: str) -> str:
    """A file name for any tenant name (they may hold any character): a digest of it."""
    return hashlib.sha256(tenant.encode()).hexdigest()[:32]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FileWriter:
    def __init__(self, target: Path, temporary: Path | None, fd: int | None) -> None:
        self._target = target
        self._temporary = temporary
        self._fd = fd  # None: the content exists already, what comes is discarded

    async def write(self, chunk: bytes) -> None:
        if self._fd is not None:
            await asyncio.to_thread(_write_all, self._fd, chunk)

    async def commit(self) -> None:
        if self._fd is None or self._temporary is None:
            return
        await asyncio.to_thread(self._commit)

    def _commit(self) -> None:
        assert self._fd is not None
        assert self._temporary is not None
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        for directory in (self._target.parent.parent, self._target.parent):
            make_private_directory(directory)
        os.replace(self._temporary, self._target)
        self._temporary = None
        _fsync_directory(self._target.parent)

    async def abort(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        if self._temporary is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temporary)
            self._temporary = None


def _write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view) :]


class FileContent:
    """ArtifactContent in a directory (`data_dir/artifacts`)."""

    def __init__(self, root: Path) -> None:
        self._root = root
        make_private_directory(root)
        # Leftovers of uploads a crash cut off: never readable, now deleted.
        shutil.rmtree(root / _TEMPORARY, ignore_errors=True)
        make_private_directory(root / _TEMPORARY)

    def _path(self, tenant: str, sha256: str) -> Path:
        check_sha256(sha256, "sha256")  # never a path component that climbs out
        return self._root / _tenant_directory(tenant) / sha256[:2] / sha256

    async def begin(self, tenant: str, sha256: str) -> _FileWriter:
        target = self._path(tenant, sha256)
        if target.exists():
            return _FileWriter(target, None, None)
        fd, name = tempfile.mkstemp(dir=self._root / _TEMPORARY, prefix=sha256[:16] + ".")
        os.fchmod(fd, FILE_MODE)
        return _FileWriter(target, Path(name), fd)

    async def exists(self, tenant: str, sha256: str) -> bool:
        return self._path(tenant, sha256).exists()

    async def read(self, tenant: str, sha256: str, *, chunk_bytes: int) -> AsyncIterator[bytes]:
        file = await asyncio.to_thread(self._path(tenant, sha256).open, "rb")
        try:
            while chunk := await asyncio.to_thread(file.read, chunk_bytes):
                yield chunk
        finally:
            file.close()

    async def close(self) -> None:
        """Nothing held open between calls."""
