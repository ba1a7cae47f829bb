"""The SDK's transparent batching of schedule_job over real gRPC: concurrent calls share one
BatchScheduleJobs, and each caller gets exactly what its lone ScheduleJob would have got."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from cpa.scheduler.v1 import scheduler_service_pb2
from cpa_client import CpaError, InvalidArgumentError, SchedulerClient

from .conftest import EVENT_TIMEOUT_S, Scheduler, todo, todos_spec

GOOD = todos_spec(todo("t", "noop"))
# Refused by the planner whether alone or in a batch: a task that depends on itself.
CYCLE = todos_spec(todo("a", "noop", depends_on=["a"]))


@pytest.fixture
async def lone(scheduler: Scheduler) -> AsyncIterator[SchedulerClient]:
    """A client that sends every schedule_job alone: the reference answers."""
    async with SchedulerClient(
        scheduler.target, timeout_s=EVENT_TIMEOUT_S, batch_linger_s=0
    ) as sdk:
        yield sdk


def _batching(scheduler: Scheduler, **settings: float) -> SchedulerClient:
    return SchedulerClient(scheduler.target, timeout_s=EVENT_TIMEOUT_S, **settings)  # type: ignore[arg-type]


async def test_concurrent_callers_share_batches_and_each_gets_its_own_job(
    scheduler: Scheduler,
) -> None:
    async with _batching(scheduler, batch_linger_s=0.05) as client:
        ids = [f"caller-{n}" for n in range(32)]
        answers = await asyncio.gather(*(client.schedule_job(GOOD, request_id=i) for i in ids))
        assert [a.job.request_id for a in answers] == ids
        assert all(a.created for a in answers)
        assert len({a.job.job_id for a in answers}) == 32
        # 32 calls went out in far fewer RPCs than 32.
        assert 1 <= client.batches_sent < 8
        for answer in answers:
            assert (await client.get_job(answer.job.job_id)).request_id == answer.job.request_id


async def test_a_refused_request_fails_only_its_caller_with_the_lone_calls_error(
    scheduler: Scheduler, lone: SchedulerClient
) -> None:
    with pytest.raises(CpaError) as alone:
        await lone.schedule_job(CYCLE)
    async with _batching(scheduler, batch_linger_s=0.05) as client:
        specs = [GOOD, CYCLE, GOOD, CYCLE, GOOD]
        results = await asyncio.gather(
            *(client.schedule_job(spec) for spec in specs), return_exceptions=True
        )
        assert client.batches_sent >= 1
    for spec, result in zip(specs, results, strict=True):
        if spec is CYCLE:
            assert isinstance(result, InvalidArgumentError)
            # The same error a lone call gets: code, reason and field (not `requests[1]...`).
            assert (result.code, result.reason) == (alone.value.code, alone.value.reason)
            assert result.field_violations == alone.value.field_violations
            assert result.metadata == alone.value.metadata
            assert result.field_violations
            assert not any(v.field.startswith("requests[") for v in result.field_violations)
        else:
            assert not isinstance(result, BaseException)
            assert result.created
            assert result.job.job_id


async def test_a_batch_too_large_as_a_whole_sends_each_request_alone(
    scheduler: Scheduler,
) -> None:
    # Each request fits the server's 256 KiB request limit; together they do not: the batch is
    # refused (PAYLOAD_TOO_LARGE, naming no request), so each goes alone and is created.
    big = todos_spec(todo("t", "noop"), context={"blob": "x" * 100_000})
    async with _batching(scheduler, batch_linger_s=0.05) as client:
        answers = await asyncio.gather(*(client.schedule_job(big) for _ in range(3)))
        assert client.batches_sent == 1
    assert all(a.created for a in answers)
    assert len({a.job.job_id for a in answers}) == 3


async def test_the_linger_joins_calls_within_it_and_holds_a_lone_call_that_long(
    scheduler: Scheduler,
) -> None:
    linger = 0.3
    async with _batching(scheduler, batch_linger_s=linger) as client:
        started = time.monotonic()
        await client.schedule_job(GOOD)
        waited = time.monotonic() - started
        # A lone call waits for company for the linger, then goes as ScheduleJob.
        assert linger <= waited < linger + EVENT_TIMEOUT_S
        assert client.batches_sent == 0
        await asyncio.gather(client.schedule_job(GOOD), client.schedule_job(GOOD))
        assert client.batches_sent == 1


async def test_a_full_batch_goes_out_without_waiting_for_the_linger(
    scheduler: Scheduler,
) -> None:
    # A linger longer than the test's timeout: only max_batch can send these.
    async with _batching(scheduler, batch_linger_s=3600, max_batch=2) as client:
        answers = await asyncio.wait_for(
            asyncio.gather(*(client.schedule_job(GOOD) for _ in range(4))), EVENT_TIMEOUT_S
        )
        assert client.batches_sent == 2
    assert len({a.job.job_id for a in answers}) == 4


async def test_request_ids_make_a_repeat_return_the_first_job(
    scheduler: Scheduler, lone: SchedulerClient
) -> None:
    # The SDK gives every call a request id; repeating the request (as gRPC's retry does)
    # returns the job the first attempt created.
    first = await lone.schedule_job(GOOD)
    assert uuid.UUID(first.job.request_id)
    again = await lone.schedule_job(GOOD, request_id=first.job.request_id)
    assert (again.created, again.job.job_id) == (False, first.job.job_id)
    # Two concurrent calls with one id never share a batch (the server refuses such a batch):
    # one creates the job, the other finds it.
    async with _batching(scheduler, batch_linger_s=0.05) as client:
        same = await asyncio.gather(
            client.schedule_job(GOOD, request_id="same-id"),
            client.schedule_job(GOOD, request_id="same-id"),
        )
    assert same[0].job.job_id == same[1].job.job_id
    assert sorted(a.created for a in same) == [False, True]
    # Explicit batches get ids too, so a repeated batch creates nothing new.
    batch = await lone.batch_schedule_jobs([GOOD, GOOD])
    repeat = await lone.batch_schedule_jobs(
        [
            scheduler_service_pb2.ScheduleJobRequest(request_id=a.job.request_id, spec=GOOD)
            for a in batch
        ]
    )
    assert [a.job.job_id for a in repeat] == [a.job.job_id for a in batch]
    assert not any(a.created for a in repeat)
