"""What turns text into vectors for semantic memory, and the vector arithmetic the stores share.

`Embedder` is deliberately smaller than LLMProvider: memory needs only vectors. A provider
serves through `ProviderEmbedder`; the embedded mode's default is a local lexical embedder,
so memory works without any model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from cpa_scheduler.llm.interface import LLMProvider


class Embedder(Protocol):
    """One vector per text, in order, all of `dimensions` floats."""

    @property
    def dimensions(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class ProviderEmbedder:
    """An LLMProvider's `embed` as an Embedder of a known dimension (the store's column width:
    a provider answering with another width is an error, not a silently broken index)."""

    def __init__(self, provider: LLMProvider, *, dimensions: int) -> None:
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
