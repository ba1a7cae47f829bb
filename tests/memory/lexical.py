"""A deterministic lexical embedder for the memory tests: words hashed into buckets, so texts
sharing words are close. (The server's own default is the LLM package's hashing embedder.)"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

DIMENSIONS = 64


class WordEmbedder:
    dimensions = DIMENSIONS

    def __init__(self) -> None:
        self.calls = 0

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        return [self.vector(text) for text in texts]

    @staticmethod
    def vector(text: str) -> list[float]:
        vector = [0.0] * DIMENSIONS
        for word in re.findall(r"\w+", text.lower()):
            vector[hashlib.sha256(word.encode()).digest()[0] % DIMENSIONS] += 1.0
        return vector
