"""SyncSchedulerClient over real gRPC. The scheduler runs on the test's event loop, so the
blocking calls run in worker threads (asyncio.to_thread)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from cpa.scheduler.v1 import job_pb2
from cpa_client import InvalidArgumentError, NotFoundError, SyncSchedulerClient

from .conftest import EVENT_TIMEOUT_S, Agents, Scheduler, todo, todos_spec


async def test_the_sync_client_schedules_watches_lists_and_raises_typed_errors(
    scheduler: Scheduler, agents: Agents
) -> None:
    await agents.start("agent-1")

    def drive() -> None:
        with SyncSchedulerClient(scheduler.target, timeout_s=EVENT_TIMEOUT_S) as client:
            job = client.schedule_job(todos_spec(todo("t", "echo", params={"n": 7}))).job
            events = list(client.watch(job.job_id))
            assert events[-1].terminal
            assert [e.sequence for e in events] == list(range(1, len(events) + 1))
            assert client.get_job(job.job_id).state == job_pb2.JOB_STATE_SUCCEEDED
            assert job.job_id in {j.job_id for j in client.list_jobs(page_size=1)}
            # Stopping an iterator early closes its stream (no thread or loop left waiting).
            for _event in client.watch_job(job.job_id):
                break
            with pytest.raises(NotFoundError) as missing:
                client.get_job("no-such-job")
            assert missing.value.code is grpc.StatusCode.NOT_FOUND
            assert missing.value.reason == "JOB_NOT_FOUND"
            with pytest.raises(InvalidArgumentError) as bad:
                client.schedule_job(todos_spec(todo("a", "noop", depends_on=["a"])))
            assert bad.value.field_violations

    await asyncio.wait_for(asyncio.to_thread(drive), EVENT_TIMEOUT_S * 2)


async def test_threads_calling_schedule_job_at_once_share_batches(scheduler: Scheduler) -> None:
    def drive() -> tuple[int, int]:
        with SyncSchedulerClient(
            scheduler.target, timeout_s=EVENT_TIMEOUT_S, batch_linger_s=0.05
        ) as client:
            with ThreadPoolExecutor(16) as threads:
                answers = list(
                    threads.map(
                        lambda n: client.schedule_job(todos_spec(todo("t", "noop"))), range(16)
                    )
                )
            return len({a.job.job_id for a in answers}), client.batches_sent

    jobs, batches = await asyncio.wait_for(asyncio.to_thread(drive), EVENT_TIMEOUT_S)
    assert jobs == 16
    assert 1 <= batches < 16
