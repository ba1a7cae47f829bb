"""What turns text into vectors for semantic memory, and the vector arithmetic the stores share.

`Embedder` is deliberately smaller than LLMProvider: memory needs only vectors. Anything with
LLMProvider's `embed` (a provider, or the local lexical HashingEmbedder, memory's default, so it
works without any model) serves through `ProviderEmbedder`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from cpa_scheduler.llm.hashing_embedder import HashingEmbedder
from cpa_scheduler.llm.interface import Embeddings


class Embedder(Protocol):
    """One vector per text, in order, all of `dimensions` floats."""

    @property
    def dimensions(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class EmbeddingSource(Protocol):
    """What LLMProvider and HashingEmbedder share: `embed` answering Embeddings."""

    async def embed(self, texts: Sequence[str]) -> Embeddings: ...


class ProviderEmbedder:
    """An LLMProvider's `embed` as an Embedder of a known dimension (the store's column width:
    a provider answering with another width is an error, not a silently broken index)."""

    def __init__(self, provider: EmbeddingSource, *, dimensions: int) -> None:
        self._provider = provider
        self._dimensions = dimensions

    @property
    def dimensions(self) -> int:
        return self._dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = (await self._provider.embed(list(texts))).vectors
        for vector in vectors:
            if len(vector) != self._dimensions:
                raise ValueError(
                    f"the embedding model answered {len(vector)} dimensions, memory is set up "
                    f"for {self._dimensions} (CPA_MEMORY_EMBEDDING_DIMENSIONS)"
                )
        return vectors


def unit(vector: Sequence[float]) -> list[float]:
    """`vector` scaled to length 1 (so a dot product is the cosine); a zero vector stays zero."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm else [0.0] * len(vector)


def lexical_embedder(dimensions: int) -> ProviderEmbedder:
    """The local, deterministic default: words and trigrams hashed (llm/hashing_embedder.py)."""
    return ProviderEmbedder(HashingEmbedder(dimensions), dimensions=dimensions)
