"""The world of the tenant-isolation matrix, shared by its gRPC half (test_tenant_matrix.py)
and its REST half (test_tenant_matrix_rest.py): a scheduler with authentication on, in either
store, an admin key of tenant acme, and what tenant globex has (jobs under known request ids, a
cancelled job with a callback delivery, a connected agent). The `world` fixture is in
conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from cpa.common.v1 import agent_capabilities_pb2
from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.executor.v1 import executor_service_pb2_grpc
from cpa.scheduler.v1 import job_pb2, memory_pb2
from cpa_client import SchedulerClient
from tests.e2e.conftest import todo

from .conftest import SecureScheduler, secure_in_store

# globex schedules a job under each: acme's ScheduleJob probes reuse them (each probe makes
# acme's own job under the id it uses, so each binding needs one of its own).
SHARED_REQUEST_ID = "shared-request-id"
SHARED_BATCH_REQUEST_ID = "shared-batch-request-id"
SHARED_LEGACY_REQUEST_ID = "shared-legacy-request-id"  # REST's `POST /schedule` binding
SHARED_AGENT_ID = "shared-agent-id"
# globex's jobs call back here: nothing listens (deliveries stay pending), but each job change
# makes a delivery in the outbox for ListCallbacks and RetryCallbacks to be asked about.
CALLBACK_URL = "https://127.0.0.1:9/cpa-callback"
WAIT_S = 20.0


@dataclass
class World:
    """acme's credential, and what globex has: a cancelled job, a connected agent, a memory."""

    scheduler: SecureScheduler
    acme_key: str
    globex_job: str
    globex_delivery: str
    globex_agent_call: Any
    globex_memory: str

    def theirs(self) -> dict[str, str]:
        """globex's resource of each kind a probe takes."""
        return {
            "job": self.globex_job,
            "request_id": SHARED_REQUEST_ID,
            "batch_request_id": SHARED_BATCH_REQUEST_ID,
            "legacy_request_id": SHARED_LEGACY_REQUEST_ID,
            "agent_id": SHARED_AGENT_ID,
            "delivery": self.globex_delivery,
            "memory": self.globex_memory,
        }

    async def globex_memory_kept(self) -> bool:
        """globex's memory is still there (read from the server's store: acme cannot see it)."""
        memory = self.scheduler.server.memory
        assert memory is not None
        hits = await memory.semantic.search("globex", memory_text(self.globex_job), k=100)
        return self.globex_memory in {hit.record.memory_id for hit in hits}

    @staticmethod
    def missing() -> str:
        return uuid.uuid4().hex


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def memory_text(job_id: str) -> str:
    """The text of the memory globex keeps of its job: what a probe searches for."""
    return f"download the supplier invoice {job_id} and mail it to accounting"


@contextlib.asynccontextmanager
async def open_world(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[World]:
    async with secure_in_store(store, request, tmp_path, callback_allow_private=True) as scheduler:
        _, acme_key = await scheduler.key("admin", tenant="acme")
        _, globex_key = await scheduler.key("submitter", tenant="globex")
        _, globex_agent = await scheduler.key("agent", tenant="globex", actions=["*"])
        spec = job_pb2.JobSpec(
            todos=job_pb2.TodoList(todos=[todo("a", "noop")]), callback_url=CALLBACK_URL
        )
        async with SchedulerClient(scheduler.target, api_key=globex_key) as globex:
            job = (await globex.schedule_job(spec, request_id=SHARED_REQUEST_ID)).job
            for request_id in (SHARED_BATCH_REQUEST_ID, SHARED_LEGACY_REQUEST_ID):
                await globex.schedule_job(spec, request_id=request_id)
            await globex.cancel_job(job.job_id)
            deliveries = [c.delivery_id async for c in globex.list_callbacks(job_id=job.job_id)]
            # A memory of globex's job, found by its text (memory_text) if a search leaked.
            memory = await globex.put_memory(
                memory_pb2.PutMemoryRequest(text=memory_text(job.job_id), job_id=job.job_id)
            )
        channel = grpc.aio.insecure_channel(scheduler.target)
        stub = executor_service_pb2_grpc.ExecutorServiceStub(channel)
        hello = ex.ConnectRequest(
            hello=ex.Hello(
                agent_id=SHARED_AGENT_ID,
                capabilities=agent_capabilities_pb2.AgentCapabilities(actions=["noop"], slots=1),
            )
        )
        queue: asyncio.Queue[ex.ConnectRequest] = asyncio.Queue()
        queue.put_nowait(hello)

        async def requests() -> AsyncIterator[ex.ConnectRequest]:
            while True:
                yield await queue.get()

        agent_call = stub.Connect(requests(), metadata=bearer(globex_agent))
        welcome = await asyncio.wait_for(agent_call.read(), WAIT_S)
        assert isinstance(welcome, ex.ConnectResponse)
        assert welcome.WhichOneof("kind") == "welcome"
        try:
            yield World(
                scheduler, acme_key, job.job_id, deliveries[0], agent_call, memory.memory_id
            )
        finally:
            agent_call.cancel()
            await channel.close(grace=None)
