"""The embedded store's directory: private to its owner, and used by one server at a time.

Two servers writing one SQLite file break each other (a cancel failed with INTERNAL while another
process held the write lock), so the first one to open the directory holds an exclusive flock
on `cpa.lock` for as long as its store is open; the lock file names its pid, so the second one
says which process it waits for. The kernel drops the lock when the holder dies, however it dies:
a stale lock file never blocks a restart.

The directory is created 0700 and the files the store writes are 0600 (they hold every job's
parameters and outputs); SQLite gives its -wal and -shm files the mode of the database file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path

LOCK_FILE = "cpa.lock"
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600


class DataDirectoryInUseError(Exception):
    """Another process holds the data directory's lock."""


class DataDirectoryLock:
    """An exclusive flock on the directory's lock file, held until release()."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, directory: Path) -> DataDirectoryLock:
        """Lock `directory` (created 0700 if missing) for this process; DataDirectoryInUseError
        when another process holds it."""
        make_private_directory(directory)
        path = directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                raise DataDirectoryInUseError(
                    f"data directory {directory} is in use by another cpa server (pid {holder}, "
                    f"lock {path}): stop it, or give this one another data directory"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # the pid is no longer true; the file stays for the next one
        os.close(fd)  # drops the flock


def make_private_directory(directory: Path) -> None:
    """Create `directory` (and missing parents) 0700; an existing one keeps its mode, which
    its owner chose."""
    if directory.is_dir():
        return
    directory.mkdir(parents=True, exist_ok=True, mode=DIRECTORY_MODE)
    os.chmod(directory, DIRECTORY_MODE)  # mkdir's mode is filtered by the umask


def make_private_file(path: Path) -> None:
    """Create `path` 0600 if missing, or make it 0600: before SQLite opens it, so that the -wal
    and -shm files it creates next to it get the same mode."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", FILE_MODE)


SECRET_BYTES = 32


def read_or_create_secret(path: Path) -> bytes:
    """The secret kept in `path` (0600), made of SECRET_BYTES random bytes on first use.

    Call it while holding the directory's lock: only one process creates it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        os.chmod(path, FILE_MODE)
        text = path.read_text(encoding="ascii").strip()
        try:
            secret = bytes.fromhex(text)
        except ValueError:
            secret = b""
        if len(secret) < SECRET_BYTES // 2:
            raise ValueError(
                f"{path} does not hold a secret (hex, at least {SECRET_BYTES // 2} bytes); "
                "delete it to have a new one made (page tokens issued before become invalid)"
            ) from None
        return secret
    secret = secrets.token_bytes(SECRET_BYTES)
    try:
        os.fchmod(fd, FILE_MODE)
        os.write(fd, f"{secret.hex()}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return secret
