"""Tenant isolation for every RPC, on both stores: a credential of tenant acme, aimed at the
resources of tenant globex, gets exactly the answer it gets for resources that do not exist
(NOT_FOUND, never a hint that they exist), and lists never show them.

Every guarded RPC must have a probe here (or a reason why it touches no tenant's resource): a
new RPC without one fails `test_every_guarded_rpc_has_a_probe`. Over gRPC; the REST half, through
the real Envoy gateway, is test_tenant_matrix_rest.py (the world of both is tenant_world.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from cpa.common.v1 import agent_capabilities_pb2
from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.executor.v1 import executor_service_pb2_grpc
from cpa.lam.v1 import lam_message_pb2 as lam
from cpa.scheduler.v1 import job_pb2, memory_pb2, scheduler_service_pb2
from cpa_client import AdminClient, CpaError, SchedulerClient
from cpa_scheduler.security.permissions import METHOD_PERMISSIONS, Permission
from tests.e2e.conftest import todo

from .tenant_world import SHARED_AGENT_ID, WAIT_S, World, bearer, memory_text

# RPCs that touch no tenant's stored resource, and why.
NO_TENANT_RESOURCE = {
    "/cpa.scheduler.v1.SchedulerService/PreviewPlan": "plans only; reads and stores nothing",
}


Outcome = Any
Probe = Callable[[World, str], Awaitable[Outcome]]


def _normal(error: CpaError, job_id: str) -> tuple[Any, ...]:
    return (error.code, error.reason, error.message.replace(job_id, "<id>"))


async def _outcome(call: Awaitable[Any], job_id: str) -> Outcome:
    try:
        return ("ok", await call)
    except CpaError as error:
        return _normal(error, job_id)


def _client(world: World) -> SchedulerClient:
    return SchedulerClient(world.scheduler.target, api_key=world.acme_key, timeout_s=WAIT_S)


async def _get(world: World, job_id: str) -> Outcome:
    async with _client(world) as client:
        return await _outcome(client.get_job(job_id), job_id)


async def _cancel(world: World, job_id: str) -> Outcome:
    async with _client(world) as client:
        return await _outcome(client.cancel_job(job_id), job_id)


async def _retry(world: World, job_id: str) -> Outcome:
    async with _client(world) as client:
        return await _outcome(client.retry_job(job_id), job_id)


async def _watch(world: World, job_id: str) -> Outcome:
    async def first_event() -> Any:
        async for event in client.watch_job(job_id):
            return event
        return None

    async with _client(world) as client:
        return await _outcome(first_event(), job_id)


async def _list_artifacts(world: World, job_id: str) -> Outcome:
    async with _client(world) as client:
        return await _outcome(client.list_artifacts(job_id), job_id)


async def _download(world: World, job_id: str) -> Outcome:
    async with _client(world) as client:
        return await _outcome(client.read_artifact(job_id, "0" * 32), job_id)


async def _lam_cancel(world: World, job_id: str) -> Outcome:
    message = lam.LamMessage(
        id=uuid.uuid4().hex,
        performative=lam.PERFORMATIVE_CANCEL,
        sender="acme-agent",
        cancel=lam.CancelBody(job_id=job_id),
    )
    async with _client(world) as client:
        reply = await client.send_message(message)
    return (reply.performative, reply.refuse.reason, reply.refuse.message.replace(job_id, "<id>"))


async def _list_jobs(world: World, job_id: str) -> Outcome:
    async with _client(world) as client:
        return job_id in {job.job_id async for job in client.list_jobs()}


async def _retry_jobs(world: World, job_id: str) -> Outcome:
    async with _client(world) as client:
        return job_id in (await client.retry_jobs(dry_run=True)).job_ids


async def _list_callbacks(world: World, job_id: str) -> Outcome:
    async with _client(world) as client:
        return [c.delivery_id async for c in client.list_callbacks(job_id=job_id)]


async def _retry_callbacks(world: World, delivery_id: str) -> Outcome:
    async with _client(world) as client:
        return await _outcome(client.retry_callbacks([delivery_id]), delivery_id)


async def _list_audit(world: World, job_id: str) -> Outcome:
    """acme's own refused probes of the id are its entries; what happened to globex's job (its
    ScheduleJob, OK) must not show."""
    async with _client(world) as client:
        entries = [e async for e in client.list_audit_entries(job_id=job_id)]
    return sorted(e.action for e in entries if e.result_code == "OK")


async def _list_agents(world: World, job_id: str) -> Outcome:
    async with _client(world) as client:
        return SHARED_AGENT_ID in {agent.agent_id async for agent in client.list_agents()}


async def _search_memory(world: World, job_id: str) -> Outcome:
    """acme searching globex's memory text finds no record of that text (acme's own notes, which
    the PutMemory probe makes, have other texts)."""
    text = memory_text(job_id)
    async with _client(world) as client:
        return [
            hit.record.text for hit in await client.search_memory(text) if hit.record.text == text
        ]


async def _put_memory(world: World, job_id: str) -> Outcome:
    """A memory naming globex's job is acme's own record: taken as for any other id, and
    never globex's."""
    request = memory_pb2.PutMemoryRequest(text=f"acme's note on {job_id}", job_id=job_id)
    async with _client(world) as client:
        made = await _outcome(client.put_memory(request), job_id)
    if made[0] == "ok":
        return ("ok", made[1].job_id == job_id, bool(made[1].memory_id))
    return made


async def _delete_memories(world: World, memory_id: str) -> Outcome:
    """acme deleting globex's record by its id deletes nothing, as for an id that does not
    exist (by globex's job id is no probe: acme's PutMemory probe left its own note naming it)."""
    request = memory_pb2.DeleteMemoriesRequest(memory_id=memory_id)
    async with _client(world) as client:
        return await _outcome(client.delete_memories(request), memory_id)


async def _schedule(world: World, request_id: str) -> Outcome:
    spec = job_pb2.JobSpec(todos=job_pb2.TodoList(todos=[todo("a", "noop")]))
    async with _client(world) as client:
        made = await client.schedule_job(spec, request_id=request_id)
    return (made.created, made.job.job_id != world.globex_job)


async def _batch_schedule(world: World, request_id: str) -> Outcome:
    request = scheduler_service_pb2.ScheduleJobRequest(
        request_id=request_id,
        spec=job_pb2.JobSpec(todos=job_pb2.TodoList(todos=[todo("a", "noop")])),
    )
    async with _client(world) as client:
        made = await client.batch_schedule_jobs([request])
    return [(r.created, r.job.job_id != world.globex_job) for r in made]


async def _connect(world: World, agent_id: str) -> Outcome:
    """acme's agent under globex's agent id is welcomed: no takeover, no AGENT_ID_IN_USE."""
    async with grpc.aio.insecure_channel(world.scheduler.target) as channel:
        stub = executor_service_pb2_grpc.ExecutorServiceStub(channel)
        hello = ex.ConnectRequest(
            hello=ex.Hello(
                agent_id=agent_id,
                capabilities=agent_capabilities_pb2.AgentCapabilities(actions=["noop"], slots=1),
            )
        )
        call = stub.Connect(iter([hello]), metadata=bearer(world.acme_key))
        first = await asyncio.wait_for(call.read(), WAIT_S)
        call.cancel()
    assert isinstance(first, ex.ConnectResponse)
    return first.WhichOneof("kind")


async def _agent_download(world: World, job_id: str) -> Outcome:
    async with grpc.aio.insecure_channel(world.scheduler.target) as channel:
        stub = executor_service_pb2_grpc.ExecutorServiceStub(channel)
        request = ex.DownloadArtifactRequest(job_id=job_id, artifact_id="0" * 32)
        try:
            async for _ in stub.DownloadArtifact(request, metadata=bearer(world.acme_key)):
                return "ok"
        except grpc.aio.AioRpcError as error:
            return _normal(CpaError.from_rpc_error(error), job_id)
    return "empty"


async def _agent_upload(world: World, job_id: str) -> Outcome:
    header = ex.UploadArtifactHeader(
        job_id=job_id,
        task_id="a",
        attempt=1,
        session_id="0" * 32,
        name="report.pdf",
        media_type="application/pdf",
        size_bytes=1,
        sha256="0" * 64,
    )
    async with grpc.aio.insecure_channel(world.scheduler.target) as channel:
        stub = executor_service_pb2_grpc.ExecutorServiceStub(channel)
        requests = iter([ex.UploadArtifactRequest(header=header)])
        try:
            await stub.UploadArtifact(requests, metadata=bearer(world.acme_key))
        except grpc.aio.AioRpcError as error:
            return _normal(CpaError.from_rpc_error(error), job_id)
    return "ok"


async def _keys(world: World, job_id: str) -> Outcome:
    async with AdminClient(world.scheduler.target, api_key=world.acme_key) as admin:
        return sorted({key.tenant for key in await admin.list_api_keys()})


_S = "/cpa.scheduler.v1.SchedulerService/"
_E = "/cpa.executor.v1.ExecutorService/"
_A = "/cpa.admin.v1.AdminService/"

# What acme sees of globex's resource (first argument) must be what it sees of none (second).
PROBES: dict[str, tuple[Probe, str]] = {
    _S + "GetJob": (_get, "job"),
    _S + "CancelJob": (_cancel, "job"),
    _S + "RetryJob": (_retry, "job"),
    _S + "WatchJob": (_watch, "job"),
    _S + "ListArtifacts": (_list_artifacts, "job"),
    _S + "DownloadArtifact": (_download, "job"),
    _S + "SendMessage": (_lam_cancel, "job"),
    _S + "ListJobs": (_list_jobs, "job"),
    _S + "RetryJobs": (_retry_jobs, "job"),
    _S + "ListAgents": (_list_agents, "job"),
    _S + "ListCallbacks": (_list_callbacks, "job"),
    _S + "RetryCallbacks": (_retry_callbacks, "delivery"),
    _S + "ListAuditEntries": (_list_audit, "job"),
    _S + "SearchMemory": (_search_memory, "job"),
    _S + "PutMemory": (_put_memory, "job"),
    _S + "DeleteMemories": (_delete_memories, "memory"),
    _S + "ScheduleJob": (_schedule, "request_id"),
    _S + "BatchScheduleJobs": (_batch_schedule, "batch_request_id"),
    _E + "Connect": (_connect, "agent_id"),
    _E + "DownloadArtifact": (_agent_download, "job"),
    _E + "UploadArtifact": (_agent_upload, "job"),
    _A + "ListApiKeys": (_keys, "job"),
    # RevokeApiKey of another tenant's key: tests/security/test_api_keys.py.
    _A + "RevokeApiKey": (_keys, "job"),
    _A + "CreateApiKey": (_keys, "job"),
}


def test_every_guarded_rpc_has_a_probe() -> None:
    guarded = {m for m, p in METHOD_PERMISSIONS.items() if p is not Permission.PUBLIC}
    assert guarded - set(PROBES) - set(NO_TENANT_RESOURCE) == set()


async def test_another_tenants_resources_look_like_missing_ones(world: World) -> None:
    theirs = world.theirs()
    for method, (probe, kind) in PROBES.items():
        missing = world.missing()
        seen_for_theirs = await probe(world, theirs[kind])
        seen_for_missing = await probe(world, missing)
        assert seen_for_theirs == seen_for_missing, method
    # And the probes observe something: globex's job is NOT_FOUND, not merely "equal".
    assert (await _get(world, world.globex_job))[:2] == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
    assert await _list_jobs(world, world.globex_job) is False
    assert await _keys(world, "") == ["acme"]
    assert await _list_agents(world, "") is False
    assert await _search_memory(world, world.globex_job) == []
    assert await _delete_memories(world, world.globex_memory) == ("ok", 0)
    assert await world.globex_memory_kept()
    assert await _list_callbacks(world, world.globex_job) == []
    assert (await _retry_callbacks(world, world.globex_delivery))[:2] == (
        grpc.StatusCode.NOT_FOUND,
        "CALLBACK_NOT_FOUND",
    )
