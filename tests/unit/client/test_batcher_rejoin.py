"""The SDK's batcher (cpa_client.batching) with callers in step: after a batch returns, the
callers it answered come back together and go out as the next batch as soon as all of them are
back, without idling a linger between batches. The transport is a recorder standing in for
the server (what BatchScheduleJobs answers is tested against a real scheduler in
tests/e2e/test_sdk_batching.py); the linger is an hour, so only the rejoin rule can send
the later batches before the test's guard runs out."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from cpa.scheduler.v1 import job_pb2
from cpa.scheduler.v1 import scheduler_service_pb2 as pb
from cpa_client.batching import ScheduleBatcher

HOUR_S = 3600.0
GUARD_S = 30.0


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.alone: list[str] = []

    async def send_batch(
        self, requests: Sequence[pb.ScheduleJobRequest], view: job_pb2.JobView.ValueType
    ) -> list[pb.ScheduleJobResponse]:
        self.batches.append([r.request_id for r in requests])
        return [pb.ScheduleJobResponse(job=job_pb2.Job(job_id=r.request_id)) for r in requests]

    async def send_one(self, request: pb.ScheduleJobRequest) -> pb.ScheduleJobResponse:
        self.alone.append(request.request_id)
        return pb.ScheduleJobResponse(job=job_pb2.Job(job_id=request.request_id))


async def test_callers_answered_by_a_batch_go_out_together_once_all_are_back() -> None:
    recorder = Recorder()
    batcher = ScheduleBatcher(recorder.send_batch, recorder.send_one, linger_s=HOUR_S)

    async def caller(name: str) -> list[str]:
        return [
            (
                await batcher.schedule(
                    pb.ScheduleJobRequest(request_id=f"{name}-{n}"), job_pb2.JOB_VIEW_UNSPECIFIED
                )
            ).job.job_id
            for n in range(3)
        ]

    callers = [asyncio.create_task(caller(name)) for name in "abc"]
    await asyncio.sleep(0)  # each caller runs to its first call, which waits in the group
    async with asyncio.timeout(GUARD_S):
        await batcher.close()  # the first batch goes now; the others only by the rule
        answers = await asyncio.gather(*callers)

    assert answers == [[f"{name}-{n}" for n in range(3)] for name in "abc"]
    assert [sorted(batch) for batch in recorder.batches] == [
        sorted(f"{name}-{n}" for name in "abc") for n in range(3)
    ]
    assert recorder.alone == []


async def test_a_group_waits_its_linger_when_fewer_callers_come_back() -> None:
    recorder = Recorder()
    batcher = ScheduleBatcher(recorder.send_batch, recorder.send_one, linger_s=HOUR_S)
    first = [
        asyncio.create_task(
            batcher.schedule(
                pb.ScheduleJobRequest(request_id=f"r{n}"), job_pb2.JOB_VIEW_UNSPECIFIED
            )
        )
        for n in range(3)
    ]
    await asyncio.sleep(0)
    await batcher.close()
    await asyncio.gather(*first)
    # One caller of three comes back: its call waits for the others (or the linger).
    late = asyncio.create_task(
        batcher.schedule(pb.ScheduleJobRequest(request_id="late"), job_pb2.JOB_VIEW_UNSPECIFIED)
    )
    await asyncio.sleep(0)
    assert not late.done()
    assert len(recorder.batches) == 1
    await batcher.close()  # what a linger's end would do
    assert (await late).job.job_id == "late"
    assert recorder.alone == ["late"]  # a group of one goes as a lone ScheduleJob
