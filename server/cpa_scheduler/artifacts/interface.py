"""Where artifact bytes live: content-addressed per tenant, behind one small interface.

The bytes of (tenant, sha256) are stored once; a writer makes them readable only at commit(),
so a half-written upload is never readable, and abort() leaves nothing behind. Which artifacts
exist, and under which names, is the job's business (ArtifactRecord on the task): this store
only answers "the bytes of this digest of this tenant".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol


class ContentWriter(Protocol):
    """One upload's bytes on their way in. Call commit() or abort() exactly once."""

    async def write(self, chunk: bytes) -> None:
        """Append `chunk` (at most a few MiB; the caller checks sizes and the digest)."""
        ...

    async def commit(self) -> None:
        """The bytes written are complete and checked: make them readable (durably)."""
        ...

    async def abort(self) -> None:
        """Drop what was written; nothing becomes readable. Safe after a failed write."""
        ...


class ArtifactContent(Protocol):
    """Artifact bytes by (tenant, sha256). Tenants never share content: the same bytes of two
    tenants are stored twice, and a digest names bytes only within its tenant."""

    async def begin(self, tenant: str, sha256: str) -> ContentWriter:
        """A writer for the bytes whose digest is `sha256` (checked by the caller before
        commit). When the tenant stores them already, the writer discards what it is given."""
        ...

    async def exists(self, tenant: str, sha256: str) -> bool: ...

    def read(self, tenant: str, sha256: str, *, chunk_bytes: int) -> AsyncIterator[bytes]:
        """The bytes in chunks of at most `chunk_bytes`; FileNotFoundError (raised on the
        first iteration) when the tenant has no such content."""
        ...

    async def close(self) -> None: ...
