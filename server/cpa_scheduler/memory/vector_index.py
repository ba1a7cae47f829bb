"""The embedded semantic memory's search index: one tenant's unit vectors in a float32 matrix.

A search is one matrix-vector product over the tenant's rows (numpy's einsum, on one thread),
masked by outcome and creation time, then the best few re-ranked exactly: at 100 000 vectors of
256 dimensions about a third of sqlite-vec 0.1.9's partition scan (docs/PERFORMANCE.md,
"Context memory"). SQLite stays the store: SqliteVecMemory loads an index from its file on a
tenant's first search and applies every committed write to it. Not thread-safe: its owner
calls it under its lock.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .interface import Outcome

OUTCOME_CODES: dict[str, int] = {"succeeded": 0, "failed": 1}
# A candidate's float32 ranking key may be this far off the exact one (256 terms of products of
# numbers ≤ 1: each off by ~6e-8); the re-ranking in float64 takes whatever comes within it.
_SLACK = 1e-4
_FIRST_CAPACITY = 64


class TenantIndex:
    """One tenant's vectors, rowids, outcomes and creation times, in parallel arrays of the
    first `size` rows (in no order: a delete moves the last row into the hole)."""

    def __init__(self, dimensions: int, capacity: int = _FIRST_CAPACITY) -> None:
        capacity = max(capacity, _FIRST_CAPACITY)
        self.size = 0
        self._vectors = np.zeros((capacity, dimensions), dtype=np.float32)
        # |v|²: 1, or 0 for a text without a word the embedder knows (stored as a zero vector),
        # which the L2 ranking puts at distance 1, not √2.
        self._norms = np.zeros(capacity, dtype=np.float32)
        self._rowids = np.zeros(capacity, dtype=np.int64)
        self._outcomes = np.zeros(capacity, dtype=np.int8)
        self._created = np.zeros(capacity, dtype=np.float64)
        self._position: dict[int, int] = {}

    @classmethod
    def of(cls, dimensions: int, rows: Sequence[tuple[int, bytes, str, float]]) -> TenantIndex:
        """The index of (rowid, float32 vector, outcome, creation time) `rows`, built at once."""
        index = cls(dimensions, len(rows))
        n = index.size = len(rows)
        if not n:
            return index
        rowids, blobs, outcomes, created = zip(*rows, strict=True)
        vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(n, dimensions)
        index._vectors[:n] = vectors
        index._norms[:n] = np.einsum("ij,ij->i", vectors, vectors)
        index._rowids[:n] = rowids
        index._outcomes[:n] = [OUTCOME_CODES[outcome] for outcome in outcomes]
        index._created[:n] = created
        index._position = {rowid: at for at, rowid in enumerate(rowids)}
        return index

    def __len__(self) -> int:
        return self.size

    def __contains__(self, rowid: int) -> bool:
        return rowid in self._position

    def add(self, rowid: int, blob: bytes, outcome: str, created: float) -> None:
        """Add (or replace) `rowid`'s float32 vector `blob`."""
        if rowid in self._position:
            self.remove(rowid)
        if self.size == len(self._rowids):
            self._grow(2 * self.size)
        at = self.size
        vector = np.frombuffer(blob, dtype=np.float32)
        self._vectors[at] = vector
        self._norms[at] = np.dot(vector, vector)
        self._rowids[at] = rowid
        self._outcomes[at] = OUTCOME_CODES[outcome]
        self._created[at] = created
        self._position[rowid] = at
        self.size += 1

    def remove(self, rowid: int) -> None:
        at = self._position.pop(rowid, None)
        if at is None:
            return
        last = self.size - 1
        if at != last:
            moved = int(self._rowids[last])
            for column in (self._vectors, self._norms, self._rowids, self._outcomes, self._created):
                column[at] = column[last]
            self._position[moved] = at
        self.size = last

    def _grow(self, capacity: int) -> None:
        def grown(column: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
            wider = np.zeros((capacity, *column.shape[1:]), dtype=column.dtype)
            wider[: self.size] = column[: self.size]
            return wider

        self._vectors = grown(self._vectors)  # type: ignore[assignment]
        self._norms = grown(self._norms)  # type: ignore[assignment]
        self._rowids = grown(self._rowids)  # type: ignore[assignment]
        self._outcomes = grown(self._outcomes)  # type: ignore[assignment]
        self._created = grown(self._created)  # type: ignore[assignment]

    def candidates(
        self, query: Sequence[float], k: int, outcome: Outcome | None, cutoff: float
    ) -> list[tuple[int, float]]:
        """(rowid, squared L2 distance to the unit vector `query`, exact in float64) of at least
        the k nearest rows of `outcome` (any when None) created at or after `cutoff`, nearest
        first: every row within float32 rounding of the k-th, so that the caller can break ties
        exactly (by memory id) among the first k."""
        n = self.size
        if not n:
            return []
        query32 = np.asarray(query, dtype=np.float32)
        # |v - q|² = |v|² + 1 - 2 v·q: rank by 2 v·q - |v|², larger nearer. einsum's loop on one
        # thread, not BLAS's gemv on every core: as fast alone, and at 100 000 on a loaded 2-core
        # box 7 / 13 ms p50 / p99 against 15 / 22 (docs/PERFORMANCE.md).
        key = np.einsum("ij,j->i", self._vectors[:n], query32)
        key *= 2
        key -= self._norms[:n]
        keep = None
        if outcome is not None:
            keep = self._outcomes[:n] == OUTCOME_CODES[outcome]
        if cutoff != float("-inf"):
            fresh = self._created[:n] >= cutoff
            keep = fresh if keep is None else keep & fresh
        rows = None
        if keep is not None:  # only the rows kept ranked (not the others at -inf: a slow select)
            rows = np.flatnonzero(keep)
            key = key[rows]
        live = len(key)
        if not live:
            return []
        k = min(k, live)
        kth = np.partition(key, live - k)[live - k]
        near = np.flatnonzero(key >= kth - _SLACK)
        if rows is not None:
            near = rows[near]
        # The exact distance in float64 of the few (the same for equal vectors wherever they sit
        # in the matrix, which a BLAS kernel's float32 sums need not be).
        difference = self._vectors[near].astype(np.float64) - query32.astype(np.float64)
        distances = np.einsum("ij,ij->i", difference, difference)
        order = np.argsort(distances, kind="stable")
        return [(int(self._rowids[near[i]]), float(distances[i])) for i in order]
