"""A local, deterministic lexical embedder: each word hashed (with a sign) into one of
`dimensions` buckets, so texts sharing words are close and no model is needed.

Interim default of the embedded mode until the LLM package's hashing embedder
(cpa_scheduler/llm/hashing_embedder.py) is merged; then that one replaces this file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

_WORD = re.compile(r"\w+")


class LexicalEmbedder:
    """Bag of words, signed feature hashing (the sign keeps colliding words from adding up)."""

    def __init__(self, dimensions: int = 256) -> None:
        self._dimensions = dimensions

    @property
    def dimensions(self) -> int:
        return self._dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self.vector(text) for text in texts]

    def vector(self, text: str) -> list[float]:
        vector = [0.0] * self._dimensions
        for word in _WORD.findall(text.lower()):
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            bucket = int.from_bytes(digest[:4], "little") % self._dimensions
            vector[bucket] += 1.0 if digest[4] & 1 else -1.0
        return vector
