"""A request id returns the job it created for the retention window, and is free afterwards."""

from __future__ import annotations

import pytest

from cpa_scheduler.domain import InvalidArgument, JobOptions, JobSource, Reason, SourceKind, ToDo
from cpa_scheduler.orchestration import Orchestrator
from cpa_scheduler.planning import TodoRequest
from cpa_scheduler.settings import Settings

from .conftest import Clock

RETENTION_S = 3600.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"idempotency_retention_s": RETENTION_S})


async def submit(orchestrator: Orchestrator, request_id: str, *, action: str = "noop") -> str:
    job, _ = await orchestrator.submit(
        tenant="acme",
        plan=orchestrator.plan(TodoRequest([ToDo(id="step", action=action)]), context={}),
        source=JobSource(kind=SourceKind.TODOS),
        options=JobOptions(max_parallelism=1),
        request_id=request_id,
        request_fingerprint=action,
    )
    return job.job_id


async def test_a_request_id_returns_its_job_within_the_window_and_is_free_after(
    orchestrator: Orchestrator, clock: Clock
) -> None:
    first = await submit(orchestrator, "req-1")
    clock.advance(RETENTION_S - 1)
    assert await orchestrator.forget_request_ids() == 0
    assert await submit(orchestrator, "req-1") == first
    with pytest.raises(InvalidArgument) as caught:
        await submit(orchestrator, "req-1", action="echo")
    assert caught.value.reason is Reason.REQUEST_ID_REUSED

    clock.advance(2)
    assert await orchestrator.forget_request_ids() == 1

    second = await submit(orchestrator, "req-1", action="echo")
    assert second != first
    assert (await orchestrator.get_job("acme", first)).request_id == ""
    assert (await orchestrator.get_job("acme", second)).request_id == "req-1"
