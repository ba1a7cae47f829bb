"""The job recorder's queue is bounded: endings beyond it are dropped and counted, never
blocking the publisher; only terminal events are taken."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cpa_scheduler.domain import JobEvent
from cpa_scheduler.domain.events import JobStateChanged
from cpa_scheduler.domain.states import JobState
from cpa_scheduler.memory.embedder import lexical_embedder
from cpa_scheduler.memory.recorder import JobRecorder
from cpa_scheduler.memory.sqlite_vec_memory import SqliteVecMemory
from cpa_scheduler.storage import SqliteStore


def _event(job_id: str, *, terminal: bool) -> JobEvent:
    return JobEvent(
        job_id=job_id,
        sequence=2,
        create_time=datetime.now(UTC),
        payload=JobStateChanged(from_state=JobState.RUNNING, to_state=JobState.SUCCEEDED),
        terminal=terminal,
        tenant="a",
    )


async def test_offers_beyond_the_bound_are_dropped_and_counted(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "cpa.sqlite3")
    memory = SqliteVecMemory(tmp_path / "memory.sqlite3", lexical_embedder(64))
    try:
        recorder = JobRecorder(store=store, memory=memory, max_queued=2)
        recorder.offer([_event("j1", terminal=False)])
        recorder.offer([_event(f"j{n}", terminal=True) for n in range(5)])

        assert recorder.dropped == 3
    finally:
        await memory.close()
        await store.close()
