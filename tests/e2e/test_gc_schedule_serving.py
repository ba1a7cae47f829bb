"""A serving replica runs Python's full collections on its clock and gives the collector back
when it stops (cpa_scheduler.gc_schedule; CPA_GC_FULL_COLLECTION_INTERVAL_S)."""

from __future__ import annotations

import gc
from pathlib import Path

from cpa_scheduler.server import SchedulerServer

from .conftest import e2e_settings


async def test_a_serving_replica_holds_the_schedule_until_it_stops(tmp_path: Path) -> None:
    before = gc.get_threshold()
    server = SchedulerServer(e2e_settings(tmp_path, gc_full_collection_interval_s=60))
    await server.start("127.0.0.1:0")
    try:
        assert gc.get_threshold()[2] > 10**9, "CPython's automatic full collections are off"
        assert gc.get_freeze_count() > 0
        assert any(task.get_name() == "gc-full-collections" for task in server._background)
    finally:
        await server.stop(grace_s=0, drain_s=0)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_interval_zero_leaves_python_its_own_schedule(tmp_path: Path) -> None:
    before = gc.get_threshold()
    server = SchedulerServer(e2e_settings(tmp_path, gc_full_collection_interval_s=0))
    await server.start("127.0.0.1:0")
    try:
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0
    finally:
        await server.stop(grace_s=0, drain_s=0)
