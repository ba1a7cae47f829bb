"""Hostile SchedulerService calls: valid templates per RPC, their mutations, random requests,
and raw bodies (invalid UTF-8, garbage) that only a generic call without serializer can send."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.message import Message
from hypothesis import strategies as st

from cpa.common.v1 import todo_pb2
from cpa.lam.v1 import lam_message_pb2 as lam
from cpa.scheduler.v1 import audit_pb2, callback_pb2, job_pb2, memory_pb2
from cpa.scheduler.v1 import scheduler_service_pb2 as svc

from .arena import HOSTILE_TENANTS, NORMAL_TENANT
from .calls import SCHEDULER, HostileCall
from .strategies import KNOWN, field_paths, message_class, message_of, mutated

# Placeholder of a string field whose bytes are swapped for invalid UTF-8 after serializing
# (same length, so every length prefix around it stays right).
PLACEHOLDER = "Q7PLACEHOLDERQ7"
INVALID_UTF8 = (
    b"\xff",
    b"\x80",
    b"\xc0\xaf",  # overlong "/"
    b"\xed\xa0\x80",  # a UTF-16 surrogate
    b"\xe2\x82",  # truncated
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xf8\x88\x80\x80\x80",  # five-byte form
)


def _struct(content: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(content)
    return struct


def _known_job() -> str:
    """A hostile tenant's job (the seeded ones come right after the fixed names)."""
    jobs = [job_id for job_id, task_id, _ in KNOWN.attempts if task_id == "t1"]
    return jobs[0] if jobs else "job-1"


def _todo(task_id: str = "a", depends_on: tuple[str, ...] = ()) -> todo_pb2.ToDo:
    todo = todo_pb2.ToDo(
        id=task_id,
        action=todo_pb2.ACTION_TYPE_CUSTOM,
        custom_action="echo",
        description="d",
        text="t",
        params=_struct({"k": "v", "n": 1.5, "list": [1, "x"], "o": {"p": True}}),
        depends_on=list(depends_on),
        required_capabilities=["c"],
        required_labels={"site": "b"},
        selector=todo_pb2.Selector(strategy=todo_pb2.SELECTOR_STRATEGY_CSS, value="#x"),
        retry_policy=todo_pb2.RetryPolicy(max_attempts=2, backoff_multiplier=2.0, jitter=0.1),
        credential_refs={"portal": "env:PORTAL_PASSWORD", "mailbox": "mail.token"},
    )
    todo.timeout.FromSeconds(30)
    todo.schedule_to_start_timeout.FromSeconds(30)
    if depends_on:
        todo.inputs["in"].CopyFrom(todo_pb2.OutputReference(task_id=depends_on[0], output_key="k"))
    return todo


def _spec() -> job_pb2.JobSpec:
    spec = job_pb2.JobSpec(
        todos=job_pb2.TodoList(todos=[_todo("a"), _todo("b", ("a",))]),
        context=_struct({"who": "me"}),
        labels={"team": "ops"},
        max_parallelism=2,
        default_retry_policy=todo_pb2.RetryPolicy(max_attempts=3),
        callback_url="https://hooks.example.com/hook",
    )
    spec.deadline.FromSeconds(4_000_000_000)
    return spec


def templates(rpc: str) -> list[Message]:
    """Valid requests of the RPC (ids from the arena), the starting points of mutations."""
    job_id = _known_job()
    text_spec = job_pb2.JobSpec(text="download the invoice from the portal and mail it")
    intent_spec = job_pb2.JobSpec(
        intent=job_pb2.IntentInvocation(name="portal_download_and_mail", parameters=_struct({}))
    )
    schedule = svc.ScheduleJobRequest(request_id="r-1", spec=_spec())
    lam_request = lam.LamMessage(
        id="m-1",
        performative=lam.PERFORMATIVE_REQUEST,
        sender="agent://other",
        receivers=["scheduler"],
        intent="x",
        payload=_struct({"a": 1}),
        correlation=lam.Correlation(conversation_id="c-1", reply_with="r"),
        security=lam.Security(tenant="", credential_refs={"portal": "file:/run/secrets/p"}),
        request=lam.RequestBody(todos=[_todo("a")], parameters=_struct({})),
    )
    lam_request.expected.deadline.FromSeconds(4_000_000_000)
    lam_cancel = lam.LamMessage(
        id="m-2",
        performative=lam.PERFORMATIVE_CANCEL,
        sender="agent://other",
        correlation=lam.Correlation(conversation_id="c-1"),
        cancel=lam.CancelBody(job_id=job_id, reason="stop"),
    )
    by_rpc: dict[str, list[Message]] = {
        "ScheduleJob": [
            schedule,
            svc.ScheduleJobRequest(spec=text_spec),
            svc.ScheduleJobRequest(spec=intent_spec),
        ],
        "BatchScheduleJobs": [
            svc.BatchScheduleJobsRequest(
                requests=[schedule, svc.ScheduleJobRequest(request_id="r-2", spec=_spec())]
            )
        ],
        "GetJob": [svc.GetJobRequest(job_id=job_id)],
        "ListJobs": [
            svc.ListJobsRequest(
                page_size=10,
                filter='state = FAILED AND labels.team = "ops" AND create_time > '
                '"2026-01-01T00:00:00Z"',
            )
        ],
        "CancelJob": [svc.CancelJobRequest(job_id=job_id, reason="because")],
        "RetryJob": [svc.RetryJobRequest(job_id=job_id)],
        "RetryJobs": [
            svc.RetryJobsRequest(filter="dead_lettered = true", max_jobs=5, dry_run=True)
        ],
        "WatchJob": [svc.WatchJobRequest(job_id=job_id, after_sequence=0)],
        "SendMessage": [svc.SendMessageRequest(message=m) for m in (lam_request, lam_cancel)],
        "PreviewPlan": [svc.PreviewPlanRequest(spec=s) for s in (text_spec, intent_spec, _spec())],
        "ListAgents": [svc.ListAgentsRequest(page_size=5, filter='actions = "noop"')],
        "ListArtifacts": [
            svc.ListArtifactsRequest(job_id=job_id),
            svc.ListArtifactsRequest(job_id=job_id, task_id="t1"),
            svc.ListArtifactsRequest(job_id=job_id, page_size=1, page_token="e30"),
        ],
        "DownloadArtifact": [svc.DownloadArtifactRequest(job_id=job_id, artifact_id="0" * 32)],
        "ListCallbacks": [
            callback_pb2.ListCallbacksRequest(job_id=job_id, page_size=5),
            callback_pb2.ListCallbacksRequest(state=callback_pb2.CALLBACK_STATE_DEAD),
        ],
        "RetryCallbacks": [
            callback_pb2.RetryCallbacksRequest(delivery_ids=["0" * 32]),
            callback_pb2.RetryCallbacksRequest(all_dead=True, max_callbacks=5),
        ],
        "ListAuditEntries": [
            audit_pb2.ListAuditEntriesRequest(job_id=job_id, action="CancelJob", page_size=5),
            audit_pb2.ListAuditEntriesRequest(principal="anonymous", result="NOT_FOUND"),
        ],
        "SearchMemory": [
            memory_pb2.SearchMemoryRequest(text="archive the weekly reports", k=3),
            memory_pb2.SearchMemoryRequest(
                text="sync the ledger", outcome=memory_pb2.MEMORY_OUTCOME_FAILED
            ),
        ],
        "PutMemory": [
            memory_pb2.PutMemoryRequest(
                text="archive the weekly reports",
                plan=[struct_pb2.Struct(fields={"id": struct_pb2.Value(string_value="a")})],
                job_id=job_id,
            ),
            memory_pb2.PutMemoryRequest(
                text="sync the ledger",
                outcome=memory_pb2.MEMORY_OUTCOME_FAILED,
                failure_reason="BANK_DOWN: refused",
            ),
        ],
        "DeleteMemories": [
            memory_pb2.DeleteMemoriesRequest(memory_id="0" * 32),
            memory_pb2.DeleteMemoriesRequest(job_id=job_id),
            memory_pb2.DeleteMemoriesRequest(all=True),
        ],
    }
    return by_rpc[rpc]


def hostile_tenant() -> st.SearchStrategy[str | None]:
    """Any tenant but the normal job's: none (the default), the hostile ones, odd names."""
    printable = st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40
    )
    odd = st.one_of(printable, st.just(4_000).map(_long_name)).filter(_not_normal)
    return st.one_of(st.none(), st.sampled_from(HOSTILE_TENANTS), odd)


def _long_name(size: int) -> str:
    return "t" * size


def _not_normal(tenant: str) -> bool:
    return tenant.lower() != NORMAL_TENANT


def _request_type(rpc: str) -> type[Message]:
    return message_class(SCHEDULER.methods_by_name[rpc].input_type)


def hostile_call(rpc: str, *, mutate: bool) -> st.SearchStrategy[HostileCall]:
    """One of the RPC's templates with a field mutated, or a random request of its type."""
    random = message_of(_request_type(rpc).DESCRIPTOR)
    changed = mutated(templates(rpc))
    tenants = hostile_tenant()

    # A composite, so that hypothesis prints the call's short repr, not how it was built.
    @st.composite
    def draw(draw_: st.DrawFn) -> HostileCall:
        tenant = draw_(tenants)
        if mutate:
            mutation = draw_(changed)
            return HostileCall(rpc, mutation.message, tenant, f"mutated {mutation.path}")
        return HostileCall(rpc, draw_(random), tenant, "random")

    return draw()


def with_invalid_utf8(message: Message, path_index: int, bad: bytes) -> tuple[bytes, str] | None:
    """The message's bytes with one string field (a repeated one's first entry, when it has
    one) holding invalid UTF-8."""
    copy = type(message)()
    copy.CopyFrom(message)
    strings = [
        (name, parent, fd)
        for name, parent, fd in field_paths(copy)
        if fd.type == fd.TYPE_STRING and (not fd.is_repeated or getattr(parent, fd.name))
    ]
    if not strings:
        return None
    name, parent, fd = strings[path_index % len(strings)]
    if fd.is_repeated:
        getattr(parent, fd.name)[0] = PLACEHOLDER
    else:
        setattr(parent, fd.name, PLACEHOLDER)
    raw = copy.SerializeToString()
    replacement = (b"a" + bad).ljust(len(PLACEHOLDER), b"a")
    assert raw.count(PLACEHOLDER.encode()) == 1
    return raw.replace(PLACEHOLDER.encode(), replacement), name


def raw_body(templates_: list[Message]) -> st.SearchStrategy[tuple[bytes, str]]:
    """Bodies the generated client cannot send: invalid UTF-8 in a string field, cut-off or
    random bytes. (Nesting past the decoder's limit comes with the random typed requests.)"""

    # Templates with a string field to spoil (RetryCallbacks' all_dead one has none).
    with_strings = [t for t in templates_ if with_invalid_utf8(t, 0, b"\xff") is not None]

    @st.composite
    def utf8(draw: st.DrawFn) -> tuple[bytes, str]:
        template = draw(st.sampled_from(with_strings))
        made = with_invalid_utf8(
            template, draw(st.integers(0, 200)), draw(st.sampled_from(INVALID_UTF8))
        )
        assert made is not None
        return made[0], f"invalid UTF-8 in {made[1]}"

    @st.composite
    def cut(draw: st.DrawFn) -> tuple[bytes, str]:
        raw = draw(st.sampled_from(templates_)).SerializeToString()
        end = draw(st.integers(1, max(1, len(raw) - 1)))
        return raw[:end], f"cut off: first {end} of {len(raw)} bytes of a valid request"

    return st.one_of(
        utf8(),
        cut(),
        st.binary(min_size=1, max_size=300).map(lambda b: (b, "random bytes")),
    )


def raw_call(rpc: str) -> st.SearchStrategy[HostileCall]:
    bodies = raw_body(templates(rpc))
    tenants = st.one_of(st.none(), st.sampled_from(HOSTILE_TENANTS))

    @st.composite
    def draw(draw_: st.DrawFn) -> HostileCall:
        body, how = draw_(bodies)
        return HostileCall(
            rpc, body, draw_(tenants), f"raw: {how}", kind=how.split(":")[0].split(" in ")[0]
        )

    return draw()
