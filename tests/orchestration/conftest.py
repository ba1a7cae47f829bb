"""The orchestrator over the real embedded backends (SQLite, local queue and bus), on a clock
the test moves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cpa_scheduler.backends import Backends, open_backends
from cpa_scheduler.dispatch import SessionRegistry
from cpa_scheduler.orchestration import Orchestrator
from cpa_scheduler.planning import Planner
from cpa_scheduler.settings import Settings


class Clock:
    """Now, as the orchestrator sees it: a millisecond passes between two readings (so jobs
    keep their creation order), and `advance` jumps ahead."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def backends(settings: Settings) -> AsyncIterator[Backends]:
    opened = await open_backends(settings, replica_id="test", sessions=SessionRegistry())
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def orchestrator(settings: Settings, clock: Clock, backends: Backends) -> Orchestrator:
    return Orchestrator(
        store=backends.store,
        planner=Planner.from_settings(settings),
        queue=backends.queue,
        bus=backends.bus,
        directory=backends.directory,
        settings=settings,
        clock=clock,
    )
