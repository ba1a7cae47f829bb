"""Hostile input against a real server while a normal job runs (issue 11, "Done when").

Every RPC of SchedulerService gets random requests of its type (Struct values nested past what
the decoder reads included) and mutated valid ones (named tenants, other tenants' ids), then raw
bodies (invalid UTF-8, cut-off, garbage); every enum field of every template gets every value
and unknown numbers; the agent stream gets hostile sessions (forged reports, other agents'
attempts, garbage). No answer may be INTERNAL or UNKNOWN, no call may run into its deadline,
errors must not outgrow what a client reads, bad input is INVALID_ARGUMENT with ErrorInfo and
BadRequest, a reply shows only jobs of the caller's tenant. The last test checks that the normal
jobs ran as if alone (once, never lost, on their agent, which kept its one session) and that the
store is sound. Tests of this module run in order; the last one needs the others first.

Each finding fails its test with the RPC, the answer and the request, shrunk by hypothesis
(several kinds of finding per test are reported separately). FINDINGS.md lists what the suite
found on main when it was written.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cpa.common.v1 import agent_capabilities_pb2, error_pb2, todo_pb2
from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.scheduler.v1 import job_pb2
from cpa.scheduler.v1 import scheduler_service_pb2 as svc

from .agent_stream import HeldStream, Script, judge_script, script
from .arena import CALL_TIMEOUT_S, HOSTILE_TENANTS, Arena, seeded_jobs, tenant_metadata
from .artifact_uploads import Upload, explicit_uploads, known_job_ids, open_upload, uploads
from .calls import (
    SCHEDULER_RPCS,
    Finding,
    HostileCall,
    call_scheduler,
    describe_error,
    judge,
    open_connect,
)
from .consistency import normal_work_problems, server_log_problems, store_problems
from .nul_text import NUL_TEXT, NulCase, nul_answer_problem, nul_cases
from .scheduler_requests import hostile_call, raw_call, templates
from .strategies import enum_paths, enum_values, nested_value

# Bounded for CI: the module takes about a minute on 2 cores when nothing is found.
MUTATED_EXAMPLES = 30
RANDOM_EXAMPLES = 20
RAW_EXAMPLES = 12
STREAM_EXAMPLES = 40
WATCH_TIMEOUT_S = 5.0

HOSTILE = settings(
    derandomize=True,
    database=None,
    deadline=None,
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    suppress_health_check=list(HealthCheck),
    report_multiple_bugs=True,
    print_blob=False,
)

TERMINAL = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)


def still_live(arena: Arena, call: HostileCall) -> Callable[[], bool]:
    """Whether a WatchJob call that ran into its deadline follows a job that has not ended
    (asked with the arena's own metadata for the tenant the call names)."""

    def ask() -> bool:
        if call.rpc != "WatchJob" or not isinstance(call.request, svc.WatchJobRequest):
            return False
        try:
            job = arena.scheduler.GetJob(
                svc.GetJobRequest(job_id=call.request.job_id),
                metadata=tenant_metadata(call.tenant),
                timeout=CALL_TIMEOUT_S,
            ).job
        except grpc.RpcError:
            return False
        return job.state not in TERMINAL

    return ask


def _make(arena: Arena, call: HostileCall) -> None:
    """Makes the call and judges the answer; a WatchJob may only outlive its deadline while the
    job it follows has not ended."""
    watch = call.rpc == "WatchJob"
    outcome = call_scheduler(
        arena.channel, call, timeout_s=WATCH_TIMEOUT_S if watch else CALL_TIMEOUT_S
    )
    judge(call, outcome, still_live=still_live(arena, call))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("rpc", SCHEDULER_RPCS)
def test_mutated_requests(arena: Arena, rpc: str) -> None:
    @settings(HOSTILE, max_examples=MUTATED_EXAMPLES)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        _make(arena, data.draw(hostile_call(rpc, mutate=True), label="call"))

    run()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("rpc", SCHEDULER_RPCS)
def test_random_requests(arena: Arena, rpc: str) -> None:
    @settings(HOSTILE, max_examples=RANDOM_EXAMPLES)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        _make(arena, data.draw(hostile_call(rpc, mutate=False), label="call"))

    run()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("rpc", SCHEDULER_RPCS)
def test_raw_bodies(arena: Arena, rpc: str) -> None:
    @settings(HOSTILE, max_examples=RAW_EXAMPLES)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        _make(arena, data.draw(raw_call(rpc), label="call"))

    run()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("rpc", SCHEDULER_RPCS)
def test_every_enum_value(arena: Arena, rpc: str) -> None:
    """Each enum field of each template, with every declared number and undeclared ones."""
    found: dict[str, str] = {}
    for template in templates(rpc):
        for index, (path, _, fd) in enumerate(enum_paths(template)):
            for number in enum_values(fd.enum_type):
                request = type(template)()
                request.CopyFrom(template)
                _, parent, field = enum_paths(request)[index]
                setattr(parent, field.name, number)
                call = HostileCall(rpc, request, "hostile-a", f"{path} = {number}")
                try:
                    _make(arena, call)
                except Finding as failure:
                    found.setdefault(type(failure).__name__, str(failure))
    assert not found, "\n".join(found.values())


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["forged", "leases", "random", "garbage"])
def test_agent_stream_sessions(arena: Arena, kind: str) -> None:
    """forged: results, progress and declines for attempts the stream does not hold; leases:
    hellos and heartbeats naming other agents' attempts; random: random ConnectRequests,
    batches, hellos mid-stream (the normal agent's id too); garbage: undecodable frames."""

    @settings(HOSTILE, max_examples=STREAM_EXAMPLES)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        session = data.draw(script(kind), label="session")
        judge_script(session, open_connect(arena.channel, session.encoded()))

    run()


@pytest.mark.timeout(300)
def test_artifact_uploads(arena: Arena) -> None:
    """UploadArtifact streams: a chunk before the header, two headers, chunks over 1 MiB,
    forged ids and sessions (the normal job's running attempt included), odd fields, garbage
    frames; then random frame sequences. Refused with a reason, never INTERNAL or a hang, and
    (checked by the last test) the normal job is untouched."""
    found: dict[str, str] = {}
    for upload in explicit_uploads():
        try:
            judge(upload, open_upload(arena.channel, upload))
        except Finding as failure:
            found.setdefault(type(failure).__name__, str(failure))
    assert not found, "\n".join(found.values())

    @settings(HOSTILE, max_examples=STREAM_EXAMPLES)
    @given(upload=uploads(known_job_ids()))
    def run(upload: Upload) -> None:
        judge(upload, open_upload(arena.channel, upload))

    run()


@pytest.mark.timeout(120)
def test_every_error_reason_on_the_agent_stream(arena: Arena) -> None:
    """Failed results of a stream that holds nothing, with every ErrorReason and undeclared
    numbers: refused (stale), never INTERNAL, and the stream ends cleanly."""
    hello = ex.ConnectRequest(
        hello=ex.Hello(
            agent_id="hostile-enums",
            tenant=HOSTILE_TENANTS[0],
            capabilities=agent_capabilities_pb2.AgentCapabilities(actions=["noop"], slots=1),
        )
    )
    frames: list[ex.ConnectRequest | bytes] = [hello]
    job_id, _ = seeded_jobs()[0]  # an attempt this stream was never assigned
    task_id, attempt = "t1", 1
    for number in enum_values(error_pb2.ErrorReason.DESCRIPTOR):
        error = error_pb2.TaskError(code="X", message="m", reason=number)  # type: ignore[arg-type]
        result = ex.Result(job_id=job_id, task_id=task_id, attempt=attempt, error=error)
        frames.append(ex.ConnectRequest(report_id=len(frames), result=result))
    session = Script(tuple(frames), how="every ErrorReason")
    judge_script(session, open_connect(arena.channel, session.encoded()))


def _held_attempt(
    arena: Arena, tenant: str, agent_id: str
) -> tuple[job_pb2.Job, HeldStream, ex.Hello, ex.ConnectRequest]:
    """A job of one noop task assigned to a fresh stream of `agent_id`, and an empty report of
    that attempt to fill in (built in place: a copy would re-parse a too-deep message)."""
    labels = {"held": secrets.token_hex(4)}  # only this stream serves the job
    todo = todo_pb2.ToDo(
        id="t1", action=todo_pb2.ACTION_TYPE_CUSTOM, custom_action="noop", required_labels=labels
    )
    spec = job_pb2.JobSpec(todos=job_pb2.TodoList(todos=[todo]))
    job = arena.scheduler.ScheduleJob(
        svc.ScheduleJobRequest(spec=spec), metadata=tenant_metadata(tenant), timeout=CALL_TIMEOUT_S
    ).job
    capabilities = agent_capabilities_pb2.AgentCapabilities(
        actions=["noop"], labels=labels, slots=1
    )
    hello = ex.Hello(agent_id=agent_id, tenant=tenant, capabilities=capabilities)
    stream = HeldStream(arena.channel, hello, timeout_s=CALL_TIMEOUT_S)
    assert stream.next("welcome") is not None
    stream.send(ex.ConnectRequest(credit=ex.Credit(slots=1)))
    assigned = stream.next("assignment")
    assert assigned is not None, "the job was not assigned to the stream that serves it"
    report = ex.ConnectRequest(report_id=1)
    report.result.job_id = assigned.assignment.job_id
    report.result.task_id = assigned.assignment.todo.id
    report.result.attempt = assigned.assignment.attempt
    return job, stream, hello, report


@pytest.mark.timeout(120)
def test_deep_outputs_from_the_agent_that_holds_the_attempt(arena: Arena) -> None:
    """A Result whose outputs nest about as deep as the server still decodes, from the stream
    the attempt was assigned to: whatever the server answers, it is no INTERNAL and the job
    keeps reading back with the default client (GetJob, ListJobs)."""
    tenant = "hostile-deep"
    metadata = tenant_metadata(tenant)
    problems = []
    for levels in (32, 33, 34):
        job, stream, hello, report = _held_attempt(arena, tenant, f"deep-{levels}")
        report.result.outputs.update({"a": nested_value(levels - 1)})  # `levels` Structs deep
        stream.send(report)
        stream.next("report_ack")
        session = Script((ex.ConnectRequest(hello=hello),), how=f"outputs {levels} levels deep")
        judge(session, stream.close())
        try:
            arena.scheduler.GetJob(
                svc.GetJobRequest(job_id=job.job_id), metadata=metadata, timeout=CALL_TIMEOUT_S
            )
        except grpc.RpcError as error:
            problems.append(f"outputs {levels} levels deep: GetJob fails: {describe_error(error)}")
    try:
        arena.scheduler.ListJobs(svc.ListJobsRequest(), metadata=metadata, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        problems.append(f"ListJobs of the tenant fails: {describe_error(error)}")
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(120)
def test_deep_and_huge_error_details_from_the_agent_that_holds_the_attempt(arena: Arena) -> None:
    """A failed Result whose TaskError.details nest too deep for JSON, hold NaN, or are far over
    CPA_TASK_ERROR_DETAILS_MAX_BYTES (16 KiB by default), from the stream holding the attempt:
    the attempt fails with the agent's code, its details replaced by {"details_dropped": why};
    GetJob and ListJobs read the job back."""
    tenant = "hostile-details"
    metadata = tenant_metadata(tenant)
    cases: dict[str, Callable[[struct_pb2.Struct], None]] = {
        "30 levels deep": lambda d: d.update({"a": nested_value(29)}),
        "NaN": lambda d: d.update({"a": [1.0, math.nan]}),
        # Under the arena's 256 KiB request limit, far over the 16 KiB details bound.
        "200 KiB": lambda d: d.update({"dom_excerpt": "<p>" * (200 * 1024 // 3)}),
        "10000 keys": lambda d: d.update({f"k{i}": i for i in range(10_000)}),
    }
    problems = []
    for how, fill in cases.items():
        job, stream, hello, report = _held_attempt(arena, tenant, "details")
        report.result.error.code = "BROWSER_BROKE"
        report.result.error.message = how
        fill(report.result.error.details)
        stream.send(report)
        ack = stream.next("report_ack")
        judge(Script((ex.ConnectRequest(hello=hello),), how=f"details {how}"), stream.close())
        if ack is None or not ack.report_ack.accepted:
            problems.append(f"details {how}: the report was not accepted: {ack}")
            continue
        try:
            read = arena.scheduler.GetJob(
                svc.GetJobRequest(job_id=job.job_id), metadata=metadata, timeout=CALL_TIMEOUT_S
            ).job
        except grpc.RpcError as error:
            problems.append(f"details {how}: GetJob fails: {describe_error(error)}")
            continue
        (attempt,) = read.tasks[0].attempts
        kept = json_format.MessageToDict(attempt.error.details)
        if attempt.error.code != "BROWSER_BROKE" or list(kept) != ["details_dropped"]:
            problems.append(f"details {how}: recorded as {attempt.error.code} with {kept}")
    try:
        arena.scheduler.ListJobs(svc.ListJobsRequest(), metadata=metadata, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        problems.append(f"ListJobs of the tenant fails: {describe_error(error)}")
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("rpc", SCHEDULER_RPCS)
def test_nul_in_every_text_is_refused_naming_its_field(arena: Arena, rpc: str) -> None:
    """U+0000 in any string of a valid request (a field, a repeated entry, a map's key or value,
    a string or key of a JSON value): INVALID_ARGUMENT, INVALID_FIELD naming that field (LAM:
    a not_understood reply naming it), in both stores (PostgreSQL cannot store NUL, SQLite
    can)."""
    problems = []
    for template in templates(rpc):
        for case in nul_cases(template):
            call = HostileCall(rpc, case.request, HOSTILE_TENANTS[0], f"NUL in {case.field}")
            streams = rpc in ("WatchJob", "DownloadArtifact")
            outcome = call_scheduler(
                arena.channel, call, timeout_s=WATCH_TIMEOUT_S if streams else CALL_TIMEOUT_S
            )
            problem = nul_answer_problem(case, outcome)
            if problem is not None:
                problems.append(problem)
    assert not problems, f"{len(problems)} texts with NUL:\n  " + "\n  ".join(problems)


def _attempt_of(arena: Arena, tenant: str, job_id: str) -> job_pb2.Attempt:
    """The (one) attempt of the job's one task, once it has ended."""
    deadline = time.monotonic() + CALL_TIMEOUT_S
    while True:
        job = arena.scheduler.GetJob(
            svc.GetJobRequest(job_id=job_id),
            metadata=tenant_metadata(tenant),
            timeout=CALL_TIMEOUT_S,
        ).job
        attempts = job.tasks[0].attempts
        if attempts and attempts[-1].state != job_pb2.ATTEMPT_STATE_RUNNING:
            return attempts[-1]
        assert time.monotonic() < deadline, f"the attempt did not end: {attempts}"
        time.sleep(0.05)  # polling a condition with a deadline


@pytest.mark.timeout(120)
def test_nul_in_agent_reports_never_loses_the_attempt(arena: Arena) -> None:
    """U+0000 in what the agent holding an attempt reports, in both stores: the report is
    accepted and the attempt recorded. Outputs (data later tasks read) fail the attempt with
    INVALID_OUTPUT naming the member; error details are replaced by {"details_dropped": why};
    free text (an error's code and message, a progress message) is kept with U+FFFD for NUL."""
    tenant = "hostile-nul"
    problems: list[str] = []

    def report(how: str, fill: Callable[[ex.ConnectRequest], None]) -> job_pb2.Attempt | None:
        job, stream, hello, request = _held_attempt(arena, tenant, "nul")
        fill(request)
        stream.send(request)
        ack = stream.next("report_ack")
        judge(Script((ex.ConnectRequest(hello=hello),), how=how), stream.close())
        if ack is None or not ack.report_ack.accepted:
            problems.append(f"{how}: the report was not accepted: {ack}")
            return None
        return _attempt_of(arena, tenant, job.job_id)

    for how, content, field in (
        ("NUL in an output", {"x": NUL_TEXT}, "result.outputs.x"),
        ("NUL in an output's key", {"o": {NUL_TEXT: 1}}, "result.outputs.o"),
    ):
        attempt = report(how, lambda r, c=content: r.result.outputs.update(c))  # type: ignore[misc]
        if attempt is not None and (
            attempt.error.code != "INVALID_OUTPUT" or field not in attempt.error.message
        ):
            problems.append(f"{how}: recorded as {attempt.error.code} {attempt.error.message!r}")

    def failed(request: ex.ConnectRequest) -> None:
        request.result.error.code = "BROKE\x00"
        request.result.error.message = "it \x00 broke"
        request.result.error.details.update({"why": NUL_TEXT})

    attempt = report("NUL in an error", failed)
    if attempt is not None:
        kept = json_format.MessageToDict(attempt.error.details)
        if (attempt.error.code, attempt.error.message) != ("BROKE\ufffd", "it \ufffd broke") or (
            list(kept) != ["details_dropped"]
        ):
            problems.append(f"NUL in an error: recorded as {attempt.error} with details {kept}")

    # A progress message with NUL (then a result, so that the attempt ends).
    job, stream, hello, request = _held_attempt(arena, tenant, "nul-progress")
    progress = ex.Progress(message="step \x00 one")
    progress.job_id, progress.task_id = request.result.job_id, request.result.task_id
    progress.attempt = request.result.attempt
    stream.send(ex.ConnectRequest(report_id=1, progress=progress))
    ack = stream.next("report_ack")
    request.report_id = 2
    request.result.outputs.update({"done": True})
    stream.send(request)
    stream.next("report_ack")
    judge(Script((ex.ConnectRequest(hello=hello),), how="NUL in progress"), stream.close())
    if ack is None or not ack.report_ack.accepted:
        problems.append(f"NUL in a progress message: the report was not accepted: {ack}")
    events = [
        r.event
        for r in arena.scheduler.WatchJob(
            svc.WatchJobRequest(job_id=job.job_id),
            metadata=tenant_metadata(tenant),
            timeout=CALL_TIMEOUT_S,
        )
        if r.HasField("event")
    ]
    messages = [e.task_progress.message for e in events if e.HasField("task_progress")]
    if messages != ["step \ufffd one"]:
        problems.append(f"NUL in a progress message: progress events {messages}")
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(60)
def test_nul_in_a_hello_is_refused_naming_its_field(arena: Arena) -> None:
    """A hello with U+0000 in the agent's name: INVALID_ARGUMENT naming hello.name (the agent
    holds nothing yet, so refusing loses nothing), in both stores."""
    hello = ex.Hello(
        agent_id="nul-hello",
        name=NUL_TEXT,
        tenant=HOSTILE_TENANTS[0],
        capabilities=agent_capabilities_pb2.AgentCapabilities(actions=["noop"], slots=1),
    )
    outcome = open_connect(arena.channel, [ex.ConnectRequest(hello=hello).SerializeToString()])
    case = NulCase(ex.ConnectRequest(hello=hello), "hello.name")
    assert nul_answer_problem(case, outcome) is None, outcome.describe()


@pytest.mark.timeout(120)
def test_watch_past_the_end_of_an_ended_job(arena: Arena) -> None:
    """after_sequence past the last event of an ended job: the stream ends, it does not wait
    for events that will never come."""

    def ended() -> tuple[str, str] | None:
        for job_id, tenant in seeded_jobs():
            job = arena.scheduler.GetJob(
                svc.GetJobRequest(job_id=job_id), metadata=tenant_metadata(tenant), timeout=10
            ).job
            if job.state in TERMINAL:
                return job_id, tenant
        return None

    # Seeded jobs fail within about a second, also after a hostile RetryJob re-queued them.
    deadline = time.monotonic() + 20
    while (found := ended()) is None and time.monotonic() < deadline:
        time.sleep(0.1)  # polling a condition with a deadline
    assert found is not None, "no seeded job ended within 20s"
    job_id, tenant = found
    for after in (1, 10**6, 2**63 - 1):
        request = svc.WatchJobRequest(job_id=job_id, after_sequence=after)
        _make(arena, HostileCall("WatchJob", request, tenant, f"after_sequence {after}"))


@pytest.mark.timeout(120)
def test_normal_work_and_store_survived(arena: Arena) -> None:
    """Runs last: the normal jobs ran exactly once each, never lost, on their own agent (whose
    session nobody ended), nothing forged reached them, the server logged no ERROR for bad
    input, and the store is consistent and reads back with the default client."""
    arena.normal.stop()
    problems = normal_work_problems(arena) + server_log_problems(arena) + store_problems(arena)
    assert not problems, f"{len(problems)} problems:\n  " + "\n  ".join(problems)
