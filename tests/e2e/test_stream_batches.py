"""Batches on the agent stream: several messages in one, only between ends that read them, and
every message inside handled as if sent alone."""

from __future__ import annotations

from collections.abc import Sequence

from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient

from .conftest import finished, todo, todos_spec
from .raw_agent import RawAgentStream

PARALLEL = todos_spec(*(todo(f"t{n}", "noop") for n in range(3)))


async def read_single(raw: RawAgentStream, kind: str, count: int) -> list[ex.ConnectResponse]:
    """The next `count` messages, each of which must be one `kind` (no batch)."""
    received = [await raw.read() for _ in range(count)]
    assert [m.WhichOneof("kind") if m else None for m in received] == [kind] * count
    return [m for m in received if m is not None]


async def read_flat(raw: RawAgentStream, kind: str, count: int) -> list[ex.ConnectResponse]:
    """Every message until `count` of `kind` came, batches unpacked (heartbeat acks aside)."""
    seen: list[ex.ConnectResponse] = []
    while sum(1 for message in seen if message.WhichOneof("kind") == kind) < count:
        message = await raw.read()
        assert message is not None, "the stream ended"
        if message.WhichOneof("kind") == "batch":
            seen += message.batch.responses
        else:
            seen.append(message)
    return seen


def _results_in_one_batch(job_id: str, assignments: Sequence[ex.Assignment]) -> ex.ConnectRequest:
    """A successful result for each assignment (report ids 1..n), all in one RequestBatch."""
    results = [
        ex.ConnectRequest(
            report_id=n + 1,
            result=ex.Result(job_id=job_id, task_id=a.todo.id, attempt=a.attempt),
        )
        for n, a in enumerate(assignments)
    ]
    return ex.ConnectRequest(batch=ex.RequestBatch(requests=results))


async def test_a_batch_of_results_is_stored_and_acked_result_by_result(
    raw_stream: RawAgentStream, client: SchedulerClient
) -> None:
    welcome = await raw_stream.hello("batcher", slots=3, accepts_batches=True)
    assert welcome.accepts_batches
    raw_stream.send(ex.ConnectRequest(credit=ex.Credit(slots=3)))
    job_id = (await client.schedule_job(PARALLEL)).job.job_id
    assignments = [m.assignment for m in await read_flat(raw_stream, "assignment", 3)]
    assert sorted(a.todo.id for a in assignments) == ["t0", "t1", "t2"]

    raw_stream.send(_results_in_one_batch(job_id, assignments))

    acks = [m.report_ack for m in await read_flat(raw_stream, "report_ack", 3)]
    assert sorted((ack.report_id, ack.accepted) for ack in acks) == [(1, 1), (2, 1), (3, 1)]
    job = await finished(client, job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert all(len(task.attempts) == 1 for task in job.tasks)


async def test_an_agent_that_does_not_read_batches_never_gets_one(
    raw_stream: RawAgentStream, client: SchedulerClient
) -> None:
    await raw_stream.hello("plain", slots=3)
    raw_stream.send(ex.ConnectRequest(credit=ex.Credit(slots=3)))
    job_id = (await client.schedule_job(PARALLEL)).job.job_id
    assignments = [m.assignment for m in await read_single(raw_stream, "assignment", 3)]
    # Three results at once make three acks at once: still one message each.
    raw_stream.send(_results_in_one_batch(job_id, assignments))
    acks = await read_single(raw_stream, "report_ack", 3)

    assert sorted(ack.report_ack.report_id for ack in acks) == [1, 2, 3]
    assert (await finished(client, job_id)).state == job_pb2.JOB_STATE_SUCCEEDED


async def test_a_hello_or_a_nested_batch_inside_a_batch_is_ignored(
    raw_stream: RawAgentStream, client: SchedulerClient
) -> None:
    await raw_stream.hello("odd", accepts_batches=True)
    nested = ex.ConnectRequest(batch=ex.RequestBatch(requests=[ex.ConnectRequest()]))
    hello = ex.ConnectRequest(hello=ex.Hello(agent_id="someone-else"))
    credit = ex.ConnectRequest(credit=ex.Credit(slots=1))
    raw_stream.send(ex.ConnectRequest(batch=ex.RequestBatch(requests=[nested, hello, credit])))

    # The credit after them still counts: the session goes on and gets work.
    job_id = (await client.schedule_job(todos_spec(todo("t", "noop")))).job.job_id
    assignment = (await read_flat(raw_stream, "assignment", 1))[-1].assignment
    assert (assignment.job_id, assignment.todo.id) == (job_id, "t")
    agents = [agent async for agent in client.list_agents()]
    assert [agent.agent_id for agent in agents] == ["odd"]
