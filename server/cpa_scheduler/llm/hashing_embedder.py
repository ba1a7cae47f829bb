"""A deterministic local embedder: hashed bag of words and character trigrams, L2-normalised.

It is LEXICAL, not semantic: two texts are close when they share words or pieces of words
("invoices" and "invoice" share most trigrams), not when they mean the same ("bill" and
"invoice" share nothing). It needs no model and no network, gives the same vector for the same
text in every process and on every machine (CRC-32, not Python's salted hash), and is what the
scripted provider embeds with and what memory uses when no provider embeds.

Each feature (a word, weight 1; each trigram of " word ", weight 0.5) adds its weight, with a
sign from the hash, at index hash mod dimension (the "hashing trick"; signs keep collisions from
only ever adding up). A text without any word gets the zero vector.
"""

from __future__ import annotations

import math
import re
import unicodedata
import zlib
from collections.abc import Sequence

from .interface import Embeddings

DEFAULT_DIMENSION = 256
_WORD = re.compile(r"\w+")
_WORD_WEIGHT = 1.0
_TRIGRAM_WEIGHT = 0.5


class HashingEmbedder:
    """Vectors of `dimension` floats for texts; see the module's note on what they capture."""

    def __init__(self, dimension: int = DEFAULT_DIMENSION) -> None:
        if dimension < 1:
            raise ValueError(f"dimension must be at least 1, not {dimension}")
        self.dimension = dimension

    @property
    def model(self) -> str:
        """A name that changes when the vectors would: stored vectors say what made them."""
        return f"lexical-hash-v1-{self.dimension}"

    def vector(self, text: str) -> list[float]:
        """The unit vector of `text` (all zeros when it has no word)."""
        vector = [0.0] * self.dimension
        for word in _WORD.findall(unicodedata.normalize("NFKC", text).casefold()):
            self._add(vector, "w:" + word, _WORD_WEIGHT)
            padded = f" {word} "
            for start in range(len(padded) - 2):
                self._add(vector, "t:" + padded[start : start + 3], _TRIGRAM_WEIGHT)
        norm = math.sqrt(math.fsum(x * x for x in vector))
        return [x / norm for x in vector] if norm else vector

    def _add(self, vector: list[float], feature: str, weight: float) -> None:
        digest = zlib.crc32(feature.encode("utf-8"))
        sign = -1.0 if digest & 0x80000000 else 1.0
        vector[digest % self.dimension] += sign * weight

    async def embed(self, texts: Sequence[str], *, timeout_s: float | None = None) -> Embeddings:
        """The LLMProvider.embed shape (usage 0: nothing is counted in tokens)."""
        return Embeddings(vectors=[self.vector(t) for t in texts], model=self.model)
