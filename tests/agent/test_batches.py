"""Batches on the stream, agent side: read from any server, sent only to one that reads them."""

from __future__ import annotations

from cpa.executor.v1 import executor_service_pb2 as pb

from .conftest import ConnectAgent
from .scripted_scheduler import ScriptedScheduler, assignment, attempt, todo

_QUIET = ("heartbeat", "progress")


async def test_the_hello_says_the_agent_reads_batches(connect_agent: ConnectAgent) -> None:
    _, session = await connect_agent()

    assert session.hello.accepts_batches


async def test_each_response_of_a_batch_is_handled_as_if_sent_alone(
    connect_agent: ConnectAgent,
) -> None:
    _, session = await connect_agent(slots=2)
    await session.expect("credit")

    batch = [
        pb.ConnectResponse(assignment=assignment("job-1", todo("echo", params={"n": 1}))),
        pb.ConnectResponse(assignment=assignment("job-2", todo("echo", params={"n": 2}))),
    ]
    session.send(pb.ConnectResponse(batch=pb.ResponseBatch(responses=batch)))

    results = [(await session.expect("result", ignore=_QUIET)).result for _ in range(2)]
    assert sorted((r.job_id, dict(r.outputs)["n"]) for r in results) == [
        ("job-1", 1),
        ("job-2", 2),
    ]


async def test_requests_waiting_together_go_as_one_batch_to_a_server_that_reads_them(
    scheduler: ScriptedScheduler, connect_agent: ConnectAgent
) -> None:
    _, session = await connect_agent(slots=3)
    await session.expect("credit")
    session.assign("job-slow", todo("wait", params={"seconds": 30}))
    for n in (1, 2):
        session.assign(f"job-{n}", todo("echo", params={"n": n}))
    for _ in range(2):
        await session.expect("result", ignore=_QUIET)
    session.drop()  # before acking the results: the agent sends them again

    second = await scheduler.next_session()
    second.welcome(adopted=[attempt("job-slow")], accepts_batches=True)

    # After the welcome, the two results and the credit wait together: one message.
    sent = await second.expect("batch", ignore=_QUIET)
    kinds = [request.WhichOneof("kind") for request in sent.batch.requests]
    assert kinds == ["result", "result", "credit"]
    assert sorted(r.result.job_id for r in sent.batch.requests[:2]) == ["job-1", "job-2"]
    assert [r.report_id > 0 for r in sent.batch.requests] == [True, True, False]


async def test_a_server_that_does_not_read_batches_gets_one_request_per_message(
    scheduler: ScriptedScheduler, connect_agent: ConnectAgent
) -> None:
    _, session = await connect_agent(slots=3)
    await session.expect("credit")
    for n in (1, 2):
        session.assign(f"job-{n}", todo("echo", params={"n": n}))
    for _ in range(2):
        await session.expect("result", ignore=_QUIET)
    session.drop()

    second = await scheduler.next_session()
    second.welcome()  # accepts_batches unset

    kinds = [(await second.next(ignore=_QUIET)).WhichOneof("kind") for _ in range(3)]
    assert kinds == ["result", "result", "credit"]
