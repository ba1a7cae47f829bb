"""A hand-driven agent stream over a real socket: the test decides what the 'agent' says and
when, to play agents that lag, lie or never answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc

from cpa.common.v1 import agent_capabilities_pb2, todo_pb2
from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.executor.v1 import executor_service_pb2_grpc
from cpa.scheduler.v1 import job_pb2
from cpa_client import CpaError, SchedulerClient

from .conftest import EVENT_TIMEOUT_S


class RawAgentStream:
    """One ExecutorService.Connect call; nothing is sent unless the test sends it."""

    def __init__(self, target: str, *, metadata: Sequence[tuple[str, str]] = ()) -> None:
        """`metadata`: the call's, e.g. the agent's credential with authentication on."""
        self._channel = grpc.aio.insecure_channel(target)
        self._outgoing: asyncio.Queue[ex.ConnectRequest] = asyncio.Queue()
        stub = executor_service_pb2_grpc.ExecutorServiceStub(self._channel)
        self._call = stub.Connect(self._requests(), metadata=tuple(metadata))

    async def _requests(self) -> AsyncIterator[ex.ConnectRequest]:
        while True:
            yield await self._outgoing.get()

    def send(self, request: ex.ConnectRequest) -> None:
        self._outgoing.put_nowait(request)

    async def read(self) -> ex.ConnectResponse | None:
        """The next message; None when the server ended the stream (status OK)."""
        message = await asyncio.wait_for(self._call.read(), EVENT_TIMEOUT_S)
        if isinstance(message, ex.ConnectResponse):
            return message
        assert await self._call.code() == grpc.StatusCode.OK  # the end (grpc.aio.EOF)
        return None

    async def assigned(
        self, client: SchedulerClient, task: todo_pb2.ToDo
    ) -> tuple[str, ex.Assignment]:
        """With one credit sent, the job of `task` scheduled and its assignment read (the hello
        already done): (job id, assignment)."""
        self.send(ex.ConnectRequest(credit=ex.Credit(slots=1)))
        spec = job_pb2.JobSpec(todos=job_pb2.TodoList(todos=[task]))
        job_id = (await client.schedule_job(spec)).job.job_id
        return job_id, (await self.read_until("assignment")).assignment

    async def refusal(self) -> CpaError:
        """The status the server ended the stream with (it must have failed)."""
        try:
            while await self.read() is not None:
                pass
        except grpc.aio.AioRpcError as error:
            return CpaError.from_rpc_error(error)
        raise AssertionError("the stream ended with OK")

    async def read_until(self, kind: str) -> ex.ConnectResponse:
        while (message := await self.read()) is not None:
            if message.WhichOneof("kind") == kind:
                return message
        raise AssertionError(f"the stream ended before a {kind}")

    async def hello(
        self,
        agent_id: str,
        *,
        actions: Sequence[str] = ("noop",),
        slots: int = 1,
        accepts_batches: bool = False,
        tenant: str = "",
        resume_session_id: str = "",
        running_attempts: Sequence[ex.RunningAttempt] = (),
    ) -> ex.Welcome:
        self.send_hello(
            agent_id,
            actions=actions,
            slots=slots,
            accepts_batches=accepts_batches,
            tenant=tenant,
            resume_session_id=resume_session_id,
            running_attempts=running_attempts,
        )
        return (await self.read_until("welcome")).welcome

    def send_hello(
        self,
        agent_id: str,
        *,
        actions: Sequence[str] = ("noop",),
        slots: int = 1,
        accepts_batches: bool = False,
        tenant: str = "",
        resume_session_id: str = "",
        running_attempts: Sequence[ex.RunningAttempt] = (),
    ) -> None:
        """The hello alone (a test that expects a refusal reads the call's status)."""
        capabilities = agent_capabilities_pb2.AgentCapabilities(actions=list(actions), slots=slots)
        hello = ex.Hello(
            agent_id=agent_id,
            capabilities=capabilities,
            accepts_batches=accepts_batches,
            tenant=tenant,
            running_attempts=list(running_attempts),
        )
        if resume_session_id:
            hello.resume_session_id = resume_session_id
        self.send(ex.ConnectRequest(hello=hello))

    async def heartbeat_ack(self, *attempts: ex.RunningAttempt) -> ex.HeartbeatAck:
        """Sends a heartbeat listing `attempts` and returns the server's ack: the stream lives."""
        self.send(ex.ConnectRequest(heartbeat=ex.Heartbeat(running_attempts=list(attempts))))
        return (await self.read_until("heartbeat_ack")).heartbeat_ack

    @property
    def call(self) -> grpc.aio.StreamStreamCall[ex.ConnectRequest, ex.ConnectResponse]:
        return self._call

    async def close(self) -> None:
        self._call.cancel()
        await self._channel.close(grace=None)
