"""A scripted ExecutorService for agent tests: records what the agent sends, sends what tests say.

It speaks the real wire protocol on loopback; it has no scheduling logic at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import grpc.aio
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from cpa.common.v1 import artifact_pb2, todo_pb2
from cpa.executor.v1 import executor_service_pb2 as pb
from cpa.executor.v1 import executor_service_pb2_grpc

DEFAULT_WAIT_S = 5.0
_END = object()


@dataclass(frozen=True)
class Barrier:
    """What a barrier saw: the requests before the agent's answer to it, and that answer."""

    before: list[pb.ConnectRequest]
    """Requests (not ignored) that arrived before the offer, in arrival order."""
    offer: pb.Offer
    """The answer; its cost is the number of attempts running (see Connection)."""


@dataclass(frozen=True)
class _Abort:
    code: grpc.StatusCode
    details: str


def duration(seconds: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromTimedelta(timedelta(seconds=seconds))
    return message


def timestamp_in(seconds: float) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(datetime.now(UTC) + timedelta(seconds=seconds))
    return message


def struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(dict(values))
    return message


def todo(
    action: str,
    *,
    task_id: str = "t1",
    params: Mapping[str, Any] | None = None,
    timeout_s: float | None = None,
) -> todo_pb2.ToDo:
    """A custom-action ToDo (the built-in test executors are custom actions)."""
    message = todo_pb2.ToDo(
        id=task_id,
        action=todo_pb2.ACTION_TYPE_CUSTOM,
        custom_action=action,
        params=struct(params or {}),
    )
    if timeout_s is not None:
        message.timeout.CopyFrom(duration(timeout_s))
    return message


def attempt(job_id: str, task_id: str = "t1", number: int = 1) -> pb.RunningAttempt:
    return pb.RunningAttempt(job_id=job_id, task_id=task_id, attempt=number)


def assignment(
    job_id: str,
    message: todo_pb2.ToDo,
    *,
    attempt: int = 1,
    inputs: Mapping[str, Any] | None = None,
    deadline_in_s: float | None = None,
) -> pb.Assignment:
    assigned = pb.Assignment(
        job_id=job_id, todo=message, attempt=attempt, inputs=struct(inputs or {}), tenant="default"
    )
    if deadline_in_s is not None:
        assigned.deadline.CopyFrom(timestamp_in(deadline_in_s))
    return assigned


class ScriptedSession:
    """One Connect stream as the test sees it: its hello, a queue of requests, and send helpers."""

    def __init__(self, hello: pb.Hello) -> None:
        self.hello = hello
        self.requests: asyncio.Queue[pb.ConnectRequest] = asyncio.Queue()
        """Every request after the hello, heartbeats included, in arrival order."""
        self.agent_half_closed = asyncio.Event()
        self.stream_error: Exception | None = None
        """How the request stream broke, if it did (the agent cancelled or vanished)."""
        self.ended = asyncio.Event()
        self.auto_ack_heartbeats = True
        """Answer each heartbeat with a HeartbeatAck (a silent server looks dead to the agent)."""
        self.stale_attempts: list[pb.RunningAttempt] = []
        """Named as stale in the next automatic HeartbeatAck, then cleared."""
        self._outgoing: asyncio.Queue[pb.ConnectResponse | _Abort | object] = asyncio.Queue()
        self._barriers = 0

    # --- sending ---------------------------------------------------------------------------------

    def send(self, response: pb.ConnectResponse) -> None:
        self._outgoing.put_nowait(response)

    def welcome(
        self,
        *,
        heartbeat_interval_s: float = 0.1,
        idle_heartbeat_interval_s: float = 0.0,
        adopted: Iterable[pb.RunningAttempt] = (),
        session_id: str = "session-1",
        accepts_batches: bool = False,
        max_report_bytes: int = 0,
    ) -> None:
        self.send(
            pb.ConnectResponse(
                welcome=pb.Welcome(
                    session_id=session_id,
                    replica_id="replica-test",
                    heartbeat_interval=duration(heartbeat_interval_s),
                    idle_heartbeat_interval=(
                        duration(idle_heartbeat_interval_s) if idle_heartbeat_interval_s else None
                    ),
                    lease_duration=duration(
                        3 * max(heartbeat_interval_s, idle_heartbeat_interval_s)
                    ),
                    adopted_attempts=list(adopted),
                    accepts_batches=accepts_batches,
                    max_report_bytes=max_report_bytes,
                )
            )
        )

    def assign(
        self,
        job_id: str,
        message: todo_pb2.ToDo,
        *,
        attempt: int = 1,
        inputs: Mapping[str, Any] | None = None,
        deadline_in_s: float | None = None,
    ) -> None:
        self.send(
            pb.ConnectResponse(
                assignment=assignment(
                    job_id, message, attempt=attempt, inputs=inputs, deadline_in_s=deadline_in_s
                )
            )
        )

    def cancel(self, job_id: str, task_id: str = "t1", attempt: int = 1) -> None:
        self.send(
            pb.ConnectResponse(
                cancel=pb.CancelAttempt(
                    job_id=job_id, task_id=task_id, attempt=attempt, reason="test cancel"
                )
            )
        )

    def ack(self, report_id: int, *, accepted: bool = True) -> None:
        self.send(
            pb.ConnectResponse(report_ack=pb.ReportAck(report_id=report_id, accepted=accepted))
        )

    def drop(self) -> None:
        """Ends the stream with UNAVAILABLE, as a dying server or proxy would."""
        self._outgoing.put_nowait(_Abort(grpc.StatusCode.UNAVAILABLE, "dropped by the test"))

    # --- receiving -------------------------------------------------------------------------------

    async def next(
        self, *, timeout_s: float = DEFAULT_WAIT_S, ignore: Iterable[str] = ("heartbeat",)
    ) -> pb.ConnectRequest:
        """The next request whose kind is not ignored, waiting at most timeout_s."""
        ignored = set(ignore)
        async with asyncio.timeout(timeout_s):
            while True:
                request = await self.requests.get()
                if request.WhichOneof("kind") not in ignored:
                    return request

    async def expect(
        self,
        kind: str,
        *,
        timeout_s: float = DEFAULT_WAIT_S,
        ignore: Iterable[str] = ("heartbeat",),
    ) -> pb.ConnectRequest:
        """The next not-ignored request, which must be of the given kind."""
        request = await self.next(timeout_s=timeout_s, ignore=ignore)
        assert request.WhichOneof("kind") == kind, f"expected {kind}, got {request}"
        return request

    async def barrier(
        self, *, timeout_s: float = DEFAULT_WAIT_S, ignore: Iterable[str] = ("heartbeat",)
    ) -> Barrier:
        """Sends a call for proposals and collects every request until the agent's offer for it.

        Proves an absence without sleeping: the agent handles server messages in order and
        sends on one FIFO stream, so whatever it sent in reaction to earlier server messages,
        or queued together with a request already received, arrives before the offer.
        """
        self._barriers += 1
        cfp_id = f"barrier-{self._barriers}"
        self.send(
            pb.ConnectResponse(
                call_for_proposals=pb.CallForProposals(
                    cfp_id=cfp_id, job_id="barrier", todo=todo("noop", task_id="barrier")
                )
            )
        )
        ignored = set(ignore)
        before: list[pb.ConnectRequest] = []
        async with asyncio.timeout(timeout_s):
            while True:
                request = await self.requests.get()
                kind = request.WhichOneof("kind")
                if kind == "offer" and request.offer.cfp_id == cfp_id:
                    return Barrier(before=before, offer=request.offer)
                if kind not in ignored:
                    before.append(request)

    async def next_heartbeat(self, *, timeout_s: float = DEFAULT_WAIT_S) -> pb.Heartbeat:
        async with asyncio.timeout(timeout_s):
            while True:
                request = await self.requests.get()
                if request.WhichOneof("kind") == "heartbeat":
                    return request.heartbeat


class ScriptedScheduler(executor_service_pb2_grpc.ExecutorServiceServicer):
    """The servicer: every Connect becomes a ScriptedSession, published once its hello arrived."""

    def __init__(self) -> None:
        self.sessions: asyncio.Queue[ScriptedSession] = asyncio.Queue()
        self.uploads: asyncio.Queue[pb.UploadArtifactHeader] = asyncio.Queue()
        """The header of every UploadArtifact call, in arrival order."""
        self.upload_aborts: list[grpc.StatusCode] = []
        """Codes the next UploadArtifact calls end with, one each (then they succeed)."""
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def start(self, *, port: int = 0) -> None:
        server = grpc.aio.server()
        executor_service_pb2_grpc.add_ExecutorServiceServicer_to_server(self, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    async def next_session(self, *, timeout_s: float = DEFAULT_WAIT_S) -> ScriptedSession:
        async with asyncio.timeout(timeout_s):
            return await self.sessions.get()

    async def UploadArtifact(  # noqa: N802 - the generated servicer's name
        self,
        request_iterator: AsyncIterator[pb.UploadArtifactRequest],
        context: grpc.aio.ServicerContext[pb.UploadArtifactRequest, pb.UploadArtifactResponse],
    ) -> pb.UploadArtifactResponse:
        """Records the header (`uploads`); aborts with the next of `upload_aborts`, else reads
        the bytes and answers with what the header said. What the real scheduler does with
        uploads is tested against it (tests/e2e/test_artifacts.py)."""
        first = await anext(aiter(request_iterator))
        self.uploads.put_nowait(first.header)
        if self.upload_aborts:
            await context.abort(self.upload_aborts.pop(0), "scripted")
        async for _chunk in request_iterator:
            pass
        stored = artifact_pb2.Artifact(artifact_id="artifact-1", name=first.header.name)
        return pb.UploadArtifactResponse(artifact=stored)

    async def DownloadArtifact(  # noqa: N802 - the generated servicer's name
        self,
        request: pb.DownloadArtifactRequest,
        context: grpc.aio.ServicerContext[pb.DownloadArtifactRequest, pb.DownloadArtifactResponse],
    ) -> AsyncIterator[pb.DownloadArtifactResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not scripted")
        yield pb.DownloadArtifactResponse()  # pragma: no cover (an async generator's shape)

    async def Connect(  # noqa: N802 - the generated servicer's name
        self,
        request_iterator: AsyncIterator[pb.ConnectRequest],
        context: grpc.aio.ServicerContext[pb.ConnectRequest, pb.ConnectResponse],
    ) -> AsyncIterator[pb.ConnectResponse]:
        first = await anext(request_iterator)
        assert first.WhichOneof("kind") == "hello", f"first message must be a hello: {first}"
        session = ScriptedSession(first.hello)
        reader = asyncio.create_task(self._read(request_iterator, session))
        self.sessions.put_nowait(session)
        try:
            while True:
                item = await session._outgoing.get()
                if item is _END:
                    return
                if isinstance(item, _Abort):
                    await context.abort(item.code, item.details)
                assert isinstance(item, pb.ConnectResponse)
                yield item
        finally:
            # Before any await: gRPC may cancel this handler again while it cleans up.
            session.ended.set()
            reader.cancel()
            await asyncio.wait([reader])

    @staticmethod
    async def _read(
        request_iterator: AsyncIterator[pb.ConnectRequest], session: ScriptedSession
    ) -> None:
        try:
            async for request in request_iterator:
                session.requests.put_nowait(request)
                if request.WhichOneof("kind") == "heartbeat" and session.auto_ack_heartbeats:
                    stale, session.stale_attempts = session.stale_attempts, []
                    session.send(
                        pb.ConnectResponse(
                            heartbeat_ack=pb.HeartbeatAck(
                                lease_until=timestamp_in(1.0), stale_attempts=stale
                            )
                        )
                    )
            # The agent half-closed its side: end the RPC cleanly, as the real server does.
            session.agent_half_closed.set()
        except Exception as error:
            # gRPC raises its own internal types when the peer vanishes; any of them ends the RPC.
            session.stream_error = error
        finally:
            session._outgoing.put_nowait(_END)
