"""Deleting expired long-term memories (CPA_MEMORY_RETENTION_DAYS), periodically and in batches.

Expiry is swept rather than enforced at write time: a write only ever touches its own tenant, so
a tenant that stops writing would keep its old memories for ever. Searches hide expired records
at once (both stores filter on the creation time), so the sweep's interval bounds how long an
expired record still takes space, never whether it is returned. Every replica sweeps; the
statements are idempotent (and PostgreSQL's skip rows another replica is deleting).
"""

from __future__ import annotations

import asyncio
import logging

from .interface import SemanticMemory

log = logging.getLogger(__name__)


class ExpirySweeper:
    """Deletes `memory`'s expired records every `interval_s`, at most `batch` per statement."""

    def __init__(self, memory: SemanticMemory, *, interval_s: float, batch: int) -> None:
        self._memory = memory
        self._interval_s = interval_s
        self._batch = batch

    async def sweep(self) -> int:
        """Delete every record expired now, batch by batch (each a short transaction)."""
        total = 0
        while True:
            deleted = await self._memory.sweep_expired(batch=self._batch)
            total += deleted
            if deleted < self._batch:
                return total

    async def run(self) -> None:
        while True:
            try:
                if swept := await self.sweep():
                    log.info("deleted %d expired memories", swept)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A store that is down now may be up at the next round; searches hide expired
                # records meanwhile.
                log.exception("sweeping expired memories failed")
            await asyncio.sleep(self._interval_s)
