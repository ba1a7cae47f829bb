"""How artifact bytes travel (UploadArtifact, both DownloadArtifact calls): chunk size and the
checks of a download, shared by the scheduler, the agent and the SDK, which never import each
other. Chunks are slices of a memoryview, so splitting a file never copies it in Python."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from cpa.common.v1 import artifact_pb2

# Most bytes in one chunk message (the contract's "at most 1 MiB"); the server refuses more.
MAX_CHUNK_BYTES = 1024 * 1024


class ArtifactCheckError(Exception):
    """Downloaded bytes do not match their metadata (size or sha256), or the download broke
    the contract (no metadata first, chunks after the size)."""


def split(data: bytes | bytearray | memoryview, size: int = MAX_CHUNK_BYTES) -> Iterator[bytes]:
    """`data` in chunks of at most `size` bytes (each a bytes object: protobuf needs one)."""
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield bytes(view[start : start + size])


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


async def read_download(
    parts: AsyncIterable[Any],
) -> AsyncIterator[tuple[artifact_pb2.Artifact, bytes]]:
    """`parts`: the DownloadArtifactResponse messages of either service (same shape).
    Yields (metadata, b"") once the metadata came, then (metadata, chunk) per chunk, and
    checks as it goes: the first part must be the metadata, no more bytes than its size may
    arrive, and at the end size and sha256 must match (ArtifactCheckError otherwise)."""
    artifact: artifact_pb2.Artifact | None = None
    digest = hashlib.sha256()
    received = 0
    async for part in parts:
        kind = part.WhichOneof("kind")
        if artifact is None:
            if kind != "artifact":
                raise ArtifactCheckError("the download did not start with the artifact's metadata")
            artifact = part.artifact
            yield artifact, b""
            continue
        if kind != "chunk":
            raise ArtifactCheckError("the download sent its metadata twice")
        received += len(part.chunk)
        if received > artifact.size_bytes:
            raise ArtifactCheckError(
                f"artifact {artifact.name!r}: more than its {artifact.size_bytes} bytes arrived"
            )
        digest.update(part.chunk)
        yield artifact, part.chunk
    if artifact is None:
        raise ArtifactCheckError("the download ended before the artifact's metadata")
    if received != artifact.size_bytes:
        raise ArtifactCheckError(
            f"artifact {artifact.name!r}: {received} bytes arrived, {artifact.size_bytes} expected"
        )
    if digest.hexdigest() != artifact.sha256:
        raise ArtifactCheckError(
            f"artifact {artifact.name!r}: the bytes have sha256 {digest.hexdigest()}, "
            f"not {artifact.sha256}"
        )


async def download_bytes(
    parts: AsyncIterable[Any],
) -> tuple[artifact_pb2.Artifact, bytes]:
    """The whole artifact in memory, checked (see read_download)."""
    chunks: list[bytes] = []
    artifact = artifact_pb2.Artifact()
    async for metadata, chunk in read_download(parts):
        artifact = metadata
        if chunk:
            chunks.append(chunk)
    return artifact, b"".join(chunks)


async def download_to_file(parts: AsyncIterable[Any], path: Path) -> artifact_pb2.Artifact:
    """Writes the artifact to `path` through a temporary file beside it, renamed into place
    only once size and sha256 are checked: a broken download leaves no file behind."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.part")
    artifact = artifact_pb2.Artifact()
    try:
        with temporary.open("wb") as file:
            async for metadata, chunk in read_download(parts):
                artifact = metadata
                file.write(chunk)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    return artifact
