"""ExecutorService.Connect: the server side of an agent's stream (hello, credits, reports).

The stream's writer drains an outbound queue fed by the dispatcher, the orchestrator (cancels)
and the reader (acks); the reader handles what the agent sends, each report in its own task so
that reports of many attempts share a commit. When several messages wait and the agent reads
batches (its hello says so), one ResponseBatch carries them; the agent may batch the same way.

When the replica stops (see `SchedulerServer.stop`), `refuse_new_sessions()` turns new streams
away with UNAVAILABLE (SERVER_SHUTTING_DOWN), `drain_sessions()` sends every open stream a
ServerDrain, reports keep being committed and acked until each agent ends its stream, and
`close_sessions()` ends the streams still open at the drain deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc.aio
from google.protobuf import duration_pb2

from cpa.common.v1 import error_pb2
from cpa.executor.v1 import executor_service_pb2 as pb
from cpa.executor.v1 import executor_service_pb2_grpc
from cpa_client.agent_stream import batches
from cpa_scheduler.artifacts import Artifacts
from cpa_scheduler.dispatch import AgentSession, AssignmentMessage, Outbound, SessionRegistry
from cpa_scheduler.dispatch.directory import AgentDirectory, taken_over_elsewhere
from cpa_scheduler.dispatch.dispatcher import Dispatcher
from cpa_scheduler.dispatch.silence import SilenceWatch
from cpa_scheduler.domain import (
    AgentState,
    AttemptRef,
    AuditActor,
    DomainError,
    InvalidArgument,
    NotFound,
    Reason,
    StaleAttempt,
)
from cpa_scheduler.orchestration import Orchestrator
from cpa_scheduler.security import current_principal
from cpa_scheduler.security.agent_scope import agent_tenant, check_advertised
from cpa_scheduler.security.credential_watch import CredentialWatch, until_credential_ends
from cpa_scheduler.settings import Settings

from . import artifact_calls, convert
from .audit_context import agent_for_audit
from .call_context import tenant_of
from .errors import translate_errors

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


# The message of the refusal of a new stream while this replica stops.
SHUTTING_DOWN_MESSAGE = "this replica is shutting down; connect to another replica"


@dataclass(eq=False, slots=True)
class _Stream:
    """One open Connect call: its session and the queue its writer drains (None ends it)."""

    session: AgentSession
    outgoing: asyncio.Queue[pb.ConnectResponse | None]
    # Who the agent is for the audit of its results.
    actor: AuditActor


def _batch(responses: list[pb.ConnectResponse]) -> pb.ConnectResponse:
    return pb.ConnectResponse(batch=pb.ResponseBatch(responses=responses))


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


class ExecutorServicer(executor_service_pb2_grpc.ExecutorServiceServicer):
    """One Connect call per agent session (served by add_decoded_service, which decodes the
    agent's messages: garbage ends the stream with INVALID_ARGUMENT, not INTERNAL)."""

    def __init__(
        self,
        *,
        orchestrator: Orchestrator,
        sessions: SessionRegistry,
        directory: AgentDirectory,
        dispatcher: Dispatcher,
        settings: Settings,
        replica_id: str,
        artifacts: Artifacts,
        credentials: CredentialWatch | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._artifacts = artifacts
        self._credentials = credentials
        self._orchestrator = orchestrator
        self._sessions = sessions
        self._directory = directory
        self._dispatcher = dispatcher
        self._settings = settings
        self._replica_id = replica_id
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        # Reports being applied, of every session: held here, and never cancelled by their
        # stream's end, so a commit is never split from its effects (queueing the next task).
        self._reports: set[asyncio.Task[None]] = set()
        self._no_streams = asyncio.Event()
        self._no_streams.set()
        self._refusing = False

    # -- stopping -------------------------------------------------------------------------------

    def refuse_new_sessions(self) -> None:
        """From now on a new Connect fails with UNAVAILABLE (reason SERVER_SHUTTING_DOWN)."""
        self._refusing = True

    def drain_sessions(self, *, deadline: datetime, reason: str) -> int:
        """Asks every open stream's agent to finish its attempts and reconnect elsewhere by
        `deadline` (a ServerDrain); returns how many were asked. New sessions are refused."""
        self.refuse_new_sessions()
        drain = pb.ServerDrain(reason=reason)
        drain.deadline.FromDatetime(deadline)
        for stream in self._streams.values():
            stream.session.state = AgentState.DRAINING
            stream.outgoing.put_nowait(pb.ConnectResponse(drain=drain))
        return len(self._streams)

    async def wait_sessions_closed(self) -> None:
        """Returns once no stream is open (at once when none is)."""
        await self._no_streams.wait()

    async def reports_done(self, *, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) for the reports being applied, of ended streams too."""
        if self._reports:
            await asyncio.wait(set(self._reports), timeout=timeout_s)

    def close_sessions(self) -> int:
        """Ends every open stream (status OK); returns how many. The agents' attempts keep their
        leases: the replica an agent reconnects to adopts them."""
        for stream in self._streams.values():
            stream.outgoing.put_nowait(None)
        return len(self._streams)

    def _refuse_if_stopping(self) -> None:
        if self._refusing:
            raise DomainError(SHUTTING_DOWN_MESSAGE, reason=Reason.SERVER_SHUTTING_DOWN)

    # -- artifacts (their own calls: docs/adr/0002-artifacts.md) ---------------------------------

    @translate_errors
    async def UploadArtifact(
        self, requests: AsyncIterator[pb.UploadArtifactRequest], context: Context
    ) -> pb.UploadArtifactResponse:
        return await artifact_calls.upload(
            self._artifacts,
            tenant_of(context, default=self._settings.default_tenant),
            aiter(requests),
            streams={session_id: s.session for session_id, s in self._streams.items()},
            sessions=self._sessions,
            directory=self._directory,
            idle_s=self._settings.artifact_upload_idle_s,
        )

    @translate_errors
    async def DownloadArtifact(  # type: ignore[override]  # writes with context.write
        self, request: pb.DownloadArtifactRequest, context: Context
    ) -> None:
        # A credential revoked or expired while the download runs ends it (UNAUTHENTICATED).
        async with until_credential_ends(self._credentials):
            await artifact_calls.download(
                self._artifacts,
                tenant_of(context, default=self._settings.default_tenant),
                request,
                context,
                pb.DownloadArtifactResponse,
            )

    # -- the stream -----------------------------------------------------------------------------

    @translate_errors
    async def Connect(
        self, requests: AsyncIterator[pb.ConnectRequest], context: Context
    ) -> AsyncIterator[pb.ConnectResponse]:
        self._refuse_if_stopping()
        request_iterator = aiter(requests)
        first = await anext(request_iterator, None)
        if first is None:
            return
        if first.WhichOneof("kind") != "hello":
            raise InvalidArgument(
                "the first message of a session must be a hello",
                reason=Reason.MISSING_FIELD,
                field="hello",
            )
        principal = current_principal()
        tenant = agent_tenant(principal, first.hello.tenant, default=self._settings.default_tenant)
        profile = convert.profile_from_hello(first.hello, default_tenant=tenant)
        check_advertised(
            principal,
            actions=first.hello.capabilities.actions,
            capabilities=first.hello.capabilities.capabilities,
        )
        outgoing: asyncio.Queue[pb.ConnectResponse | None] = asyncio.Queue()
        # Nothing larger goes to this agent: it would end the stream (and again after the
        # agent reconnects), so the smaller of our budget and what the agent says it accepts.
        max_send_bytes = self._settings.max_assignment_bytes
        if first.hello.max_receive_bytes > 0:
            max_send_bytes = min(max_send_bytes, first.hello.max_receive_bytes)

        def deliver(message: Outbound) -> None:
            response = convert.outbound_to_proto(message)
            if isinstance(message, AssignmentMessage):
                size = response.ByteSize()
                if size > max_send_bytes:
                    self._assignment_too_large(session, message, size=size, limit=max_send_bytes)
                    return
            outgoing.put_nowait(response)

        now = self._clock()
        session = AgentSession(
            profile=profile,
            connect_time=now,
            last_seen_time=now,
            deliver=deliver,
            close=lambda: outgoing.put_nowait(None),
        )
        resume_session_id = first.hello.resume_session_id
        # Refused before adopting anything: a second process using a live agent id.
        self._sessions.check_free(session, resume_session_id=resume_session_id)
        elsewhere = await taken_over_elsewhere(self._directory, session, resume_session_id)
        claimed = convert.attempt_refs_from_proto(first.hello.running_attempts)
        _, stale = await self._orchestrator.renew_leases(profile.tenant, profile.agent_id, claimed)
        adopted = [ref for ref in claimed if ref not in stale]
        session.running.update(adopted)
        # A stop may have begun while the leases were renewed (no await from here to the
        # registration, so drain_sessions() sees every stream it does not refuse).
        self._refuse_if_stopping()
        replaced = self._sessions.add(session, resume_session_id=resume_session_id)
        self._streams[session.session_id] = _Stream(
            session,
            outgoing,
            agent_for_audit(context, tenant=profile.tenant, agent_id=profile.agent_id),
        )
        self._no_streams.clear()
        reader: asyncio.Task[None] | None = None
        watch = SilenceWatch(
            session,
            lease_s=self._settings.lease_duration_s,
            idle_limit_s=2 * self._settings.idle_heartbeat_interval_s,
            clock=self._clock,
        )
        # The credential's end (a revoked token, an expired JWT) closes the session.
        ended: list[DomainError] = []

        def credential_ended(error: DomainError) -> None:
            log.warning("agent %s: %s; closing its stream", session.agent_id, error.message)
            ended.append(error)
            session.close()

        stop_watching = (
            self._credentials.watch(principal, credential_ended)
            if self._credentials is not None and principal is not None
            else lambda: None
        )
        try:
            if replaced is not None:
                replaced.close()
            if elsewhere is not None:
                await self._directory.close_elsewhere(elsewhere)
            self._directory.announce_now()
            log.info(
                "agent %s of tenant %s connected (%d attempts adopted%s)",
                profile.agent_id,
                profile.tenant,
                len(adopted),
                ", took over its last session" if replaced is not None else "",
            )
            yield pb.ConnectResponse(
                welcome=pb.Welcome(
                    session_id=session.session_id,
                    replica_id=self._replica_id,
                    heartbeat_interval=_duration(self._settings.heartbeat_interval_s),
                    idle_heartbeat_interval=(
                        _duration(self._settings.idle_heartbeat_interval_s)
                        if self._settings.idle_heartbeat_interval_s
                        else None
                    ),
                    lease_duration=_duration(self._settings.lease_duration_s),
                    adopted_attempts=convert.attempt_refs_to_proto(adopted),
                    accepts_batches=True,
                    max_report_bytes=self._settings.max_request_bytes,
                    max_assignment_bytes=max_send_bytes,
                )
            )
            reader = asyncio.create_task(self._read(request_iterator, session, outgoing))
            # Several waiting (a busy agent): batches, each within what the agent accepts.
            batch_bytes = max_send_bytes if first.hello.accepts_batches else 0
            async for message in batches(outgoing, batch_bytes=lambda: batch_bytes, wrap=_batch):
                yield message
            if ended:
                raise ended[0]
        finally:
            watch.stop()
            stop_watching()
            if reader is not None:
                reader.cancel()
            self._sessions.remove(session)
            del self._streams[session.session_id]
            if not self._streams:
                self._no_streams.set()
            self._directory.announce_now()
            # Its attempts keep their leases: they expire unless the agent comes back in time.
            log.info("agent %s disconnected", profile.agent_id)

    def _assignment_too_large(
        self, session: AgentSession, message: AssignmentMessage, *, size: int, limit: int
    ) -> None:
        """Fails an attempt whose assignment is too large to send; its credit comes back."""
        ref = AttemptRef(message.job_id, message.todo.id, message.attempt)
        log.warning("assignment %s is %d bytes (limit %d): failing it unsent", ref, size, limit)
        session.running.discard(ref)
        session.grant(1)
        self._dispatcher.wake()
        task = asyncio.create_task(self._fail_unsent(message.tenant, ref, size=size, limit=limit))
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _fail_unsent(self, tenant: str, ref: AttemptRef, *, size: int, limit: int) -> None:
        try:
            await self._orchestrator.assignment_too_large(tenant, ref, size=size, limit=limit)
        except Exception:
            # The attempt's lease runs out (the agent never heard of it) and it comes back.
            log.exception("failing the oversized assignment %s failed", ref)

    async def _read(
        self,
        requests: AsyncIterator[pb.ConnectRequest],
        session: AgentSession,
        outgoing: asyncio.Queue[pb.ConnectResponse | None],
    ) -> None:
        reports: set[asyncio.Task[None]] = set()
        try:
            async for request in requests:
                session.last_seen_time = self._clock()
                if request.WhichOneof("kind") != "batch":
                    await self._handle(request, session, outgoing, reports)
                    continue
                for inner in request.batch.requests:
                    if inner.WhichOneof("kind") == "batch":
                        log.warning("agent %s sent a batch inside a batch", session.agent_id)
                        continue
                    await self._handle(inner, session, outgoing, reports)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a broken stream ends the session, nothing else
            log.info("stream of agent %s ended: %s", session.agent_id, error)
        finally:
            if reports:
                # Shielded: the stream's end cancels this reader, never the reports it started.
                await asyncio.shield(asyncio.gather(*reports, return_exceptions=True))
            outgoing.put_nowait(None)

    async def _handle(
        self,
        request: pb.ConnectRequest,
        session: AgentSession,
        outgoing: asyncio.Queue[pb.ConnectResponse | None],
        reports: set[asyncio.Task[None]],
    ) -> None:
        """One request (alone or out of a batch)."""
        kind = request.WhichOneof("kind")
        if kind == "credit":
            session.grant(max(0, request.credit.slots))
            self._dispatcher.wake()
        elif kind == "heartbeat":
            await self._heartbeat(request.heartbeat, session, outgoing)
        elif kind == "drain":
            session.state = AgentState.DRAINING
            log.info("agent %s is draining", session.agent_id)
        elif kind == "assignment_ack" and request.assignment_ack.accepted:
            return  # the attempt is running: nothing to record
        elif kind in ("result", "progress", "assignment_ack"):
            task = asyncio.create_task(self._report(request, session, outgoing))
            reports.add(task)
            task.add_done_callback(reports.discard)
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)
        else:
            log.warning("agent %s sent an unexpected %s", session.agent_id, kind)

    async def _heartbeat(
        self,
        heartbeat: pb.Heartbeat,
        session: AgentSession,
        outgoing: asyncio.Queue[pb.ConnectResponse | None],
    ) -> None:
        if not self._sessions.holds(session):
            return  # taken over by the agent's new session, which renews its leases
        running = convert.attempt_refs_from_proto(heartbeat.running_attempts)
        lease_until, stale = await self._orchestrator.renew_leases(
            session.profile.tenant, session.agent_id, running
        )
        # Only drop what is stale: an assignment may be on its way, unknown to this heartbeat.
        session.running.difference_update(stale)
        ack = pb.HeartbeatAck(stale_attempts=convert.attempt_refs_to_proto(stale))
        ack.lease_until.FromDatetime(lease_until)
        outgoing.put_nowait(pb.ConnectResponse(heartbeat_ack=ack))

    async def _report(
        self,
        request: pb.ConnectRequest,
        session: AgentSession,
        outgoing: asyncio.Queue[pb.ConnectResponse | None],
    ) -> None:
        tenant, agent_id = session.key
        kind = request.WhichOneof("kind")
        refusal = error_pb2.ERROR_REASON_UNSPECIFIED
        try:
            if not self._sessions.holds(session):
                # A session taken over (or ended): its agent's new session holds the attempts.
                refusal = error_pb2.ERROR_REASON_ATTEMPT_NOT_HELD
            elif kind == "result":
                ref, report = convert.result_from_proto(
                    request.result,
                    details_max_bytes=self._settings.task_error_details_max_bytes,
                )
                if ref in session.running:
                    # The result hands its slot back (no Credit message follows it).
                    session.running.discard(ref)
                    session.grant(1)
                    self._dispatcher.wake()
                stream = self._streams.get(session.session_id)
                await self._orchestrator.report_result(
                    tenant, agent_id, ref, report, actor=stream.actor if stream else None
                )
            elif kind == "progress":
                ref, percent, message = convert.progress_from_proto(request.progress)
                await self._orchestrator.report_progress(
                    tenant, agent_id, ref, percent=percent, message=message
                )
            else:
                ack = request.assignment_ack
                if not ack.accepted:
                    ref = AttemptRef(ack.job_id, ack.task_id, ack.attempt)
                    session.running.discard(ref)
                    await self._orchestrator.decline(
                        tenant, agent_id, ref, ack.reason or "declined"
                    )
                return
        except (StaleAttempt, NotFound):
            refusal = error_pb2.ERROR_REASON_STALE_ATTEMPT
        except DomainError as error:
            refusal = convert.reason_to_proto(error.reason)
        except Exception:
            # Not acked: the agent keeps the report and sends it again after a reconnect.
            log.exception("report from agent %s failed", session.agent_id)
            return
        if request.report_id:
            outgoing.put_nowait(
                pb.ConnectResponse(
                    report_ack=pb.ReportAck(
                        report_id=request.report_id,
                        accepted=refusal == error_pb2.ERROR_REASON_UNSPECIFIED,
                        reason=refusal,
                    )
                )
            )
