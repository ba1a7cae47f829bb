"""The agent's session over ExecutorService.Connect, with reconnect, heartbeats, credits and drain.

A Connection owns what outlives one stream: the attempts running here and the outbox of results
the server has not acknowledged yet. Running one attempt is the runner's business, not this one's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio

from cpa.executor.v1 import executor_service_pb2 as pb
from cpa.executor.v1 import executor_service_pb2_grpc
from cpa_agent.artifacts import AttemptArtifacts, Link
from cpa_agent.executors.base import SecretProvider
from cpa_agent.executors.registry import ExecutorRegistry
from cpa_agent.reconnect import (
    channel_options,
    full_jitter_backoff_s,
    rotate_addresses,
)
from cpa_agent.runner import (
    AttemptKey,
    AttemptRunner,
    StopReason,
)
from cpa_agent.server_messages import LiveAttempt, ServerMessages
from cpa_agent.sessions import SessionCloser
from cpa_agent.settings import AgentSettings
from cpa_agent.stream import ConnectCall, StreamSession
from cpa_agent.telemetry import tracing
from cpa_agent.telemetry.metrics import AgentMetrics
from cpa_client import CpaError
from cpa_client.channels import credential_metadata, open_channel, tls_failure

logger = logging.getLogger(__name__)

# The stream counts as dead after this many heartbeat intervals without any server message.
DEAD_AFTER_HEARTBEAT_INTERVALS = 3
# After the drain timeout, how long the AGENT_SHUTDOWN results get to be stopped and acked.
HANDBACK_GRACE_S = 5.0
# After the agent half-closes its stream, how long the server gets to end it cleanly.
HALF_CLOSE_GRACE_S = 1.0


class SessionLostError(Exception):
    """The stream is unusable (no welcome, protocol violation, server silent); reconnect."""


class HelloRefusedError(Exception):
    """The server refused the hello itself (a field over its bounds, an action the token does
    not allow, another tenant): the agent's configuration is wrong, and reconnecting with it
    would only be refused again, for ever. The agent stops and says why."""


# Answers to a hello that no retry can change (ALREADY_EXISTS, AGENT_ID_IN_USE, can: the old
# session ends; UNAUTHENTICATED can: a token file rewritten).
_HELLO_REFUSALS = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED})


async def _cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], *, timeout_s: float | None) -> None:
    """Cancels tasks and waits (bounded) until they end, logging any that failed."""
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        _, still_running = await asyncio.wait(pending, timeout=timeout_s)
        if still_running:
            logger.warning("%d tasks ignored cancellation", len(still_running))
    for task in tasks:
        if task.done() and not task.cancelled() and (error := task.exception()) is not None:
            logger.error("task %s failed", task.get_name(), exc_info=error)


class Connection(ServerMessages):
    """Keeps one session open at a time, reconnecting with jittered backoff, until drained."""

    def __init__(
        self,
        *,
        settings: AgentSettings,
        registry: ExecutorRegistry,
        secrets: SecretProvider | None = None,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._secrets = secrets
        # What the last hello offered: the actions whose executors were available then, and
        # the capabilities of the settings and of those executors.
        self._offered_actions: frozenset[str] = frozenset()
        self._offered_capabilities: frozenset[str] = frozenset()
        self.session_closer = SessionCloser(registry)
        """Closes the executors' task sessions (cpa_agent.sessions)."""
        self.connected = asyncio.Event()
        """Set while a session is welcomed; cleared when its stream ends."""
        self.sessions_started = 0
        """Sessions welcomed so far (the first one included)."""
        self._attempts: dict[AttemptKey, LiveAttempt] = {}
        # The agent's metrics (None without CPA_AGENT_METRICS_ADDRESS): told of each ended attempt.
        self.metrics: AgentMetrics | None = None
        self._attempt_tasks: set[asyncio.Task[None]] = set()
        # Results until the server acks them (accepted or refused), in the order they ended.
        self._outbox: dict[AttemptKey, pb.Result] = {}
        self._session: StreamSession | None = None
        # The welcomed session's channel and id, for artifact calls: set just before `connected`,
        # cleared as soon as the session's stream ends (before its channel closes).
        self._link: Link | None = None
        # Server messages read so far (all sessions): a cut artifact call's session that the
        # server spoke on since the cut is alive (see _wait_for_link), which counts how many
        # such calls wait, so a message wakes waiters only when one does (rare).
        self._messages_received = 0
        self._waiting_for_proof = 0
        # The server's target; a multi-address one is rotated away from a replica that drains.
        self._target = settings.server
        # Sent with every call: the agent token, when it has one.
        self._credentials = credential_metadata(settings.token.get_secret_value())
        # The session_id of the last welcome: the next hello names it (resume_session_id).
        self._last_session_id = ""
        self._drain_reason: str | None = None
        self._drain_requested = asyncio.Event()
        self._stopping = False
        # Replaced on every change, so waiters can re-check their condition (see _notify).
        self._changed = asyncio.Event()

    # --- public surface -------------------------------------------------------------------------

    @property
    def running_attempts(self) -> frozenset[AttemptKey]:
        return frozenset(self._attempts)

    @property
    def unacked_results(self) -> tuple[AttemptKey, ...]:
        return tuple(self._outbox)

    @property
    def draining(self) -> bool:
        return self._drain_reason is not None

    def request_drain(self, reason: str = "drain requested") -> None:
        """Stops taking work; run() ends once attempts finished (or drain_timeout_s passed)."""
        if self._drain_reason is not None:
            logger.info("already draining (%s)", self._drain_reason)
            return
        self._drain_reason = reason
        self._drain_requested.set()
        logger.info("draining: %s", reason)
        if self._session is not None:
            self._session.send(pb.ConnectRequest(drain=pb.AgentDrain(reason=reason)))
        self._notify()

    async def run(self) -> None:
        """Runs sessions until a drain completes; cancelling it stops everything unreported."""
        drainer = asyncio.create_task(self._drain_when_requested(), name="agent drain")
        try:
            await self._reconnect_loop()
        finally:
            self._stopping = True
            await _cancel_and_wait([drainer], timeout_s=None)
            # Only attempts that ignored a drain's cancellation (or a hard stop) are left here.
            await _cancel_and_wait(list(self._attempt_tasks), timeout_s=HANDBACK_GRACE_S)
            self._attempts.clear()
            await self.session_closer.aclose()

    # --- state changes and waiting ---------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_until(self, predicate: Callable[[], bool], *, timeout_s: float | None) -> bool:
        """Waits until predicate() holds (re-checked on every change); False after timeout_s."""
        loop = asyncio.get_running_loop()
        deadline_s = None if timeout_s is None else loop.time() + timeout_s
        while not predicate():
            remaining_s = None if deadline_s is None else deadline_s - loop.time()
            if remaining_s is not None and remaining_s <= 0:
                return False
            changed = self._changed
            try:
                async with asyncio.timeout(remaining_s):
                    await changed.wait()
            except TimeoutError:
                return predicate()
        return True

    def _idle(self) -> bool:
        return not self._attempts and not self._outbox

    def _free_slots(self) -> int:
        return max(0, self._settings.slots - len(self._attempts))

    def _may_take_work(self, session: StreamSession) -> bool:
        return self._drain_reason is None and session.server_drain is None

    # --- reconnect loop and one session ----------------------------------------------------------

    async def _reconnect_loop(self) -> None:
        failures = 0
        while not self._stopping:
            session = StreamSession(default_report_bytes=self._settings.max_report_bytes)
            leave = False
            try:
                await self._run_session(session)
            except grpc.aio.AioRpcError as error:
                details = error.details() or ""
                logger.warning(
                    "stream to %s failed: %s %s%s",
                    self._settings.server,
                    error.code().name,
                    details,
                    f" ({meaning})" if (meaning := tls_failure(details)) else "",
                )
                if session.welcome is None and error.code() in _HELLO_REFUSALS:
                    refusal = CpaError.from_rpc_error(error)
                    fields = ", ".join(v.field for v in refusal.field_violations) or "-"
                    raise HelloRefusedError(
                        f"the scheduler refused this agent's hello: {error.code().name} "
                        f"{refusal.reason or '-'} (field {fields}): {details}"
                    ) from None
                # Refused (a replica shutting down) or unreachable before a welcome.
                leave = error.code() == grpc.StatusCode.UNAVAILABLE and session.welcome is None
            except SessionLostError as error:
                logger.warning("stream to %s lost: %s", self._settings.server, error)
            except Exception:
                # A bug must not end the agent while attempts run: log it and start afresh.
                logger.exception("session with %s failed unexpectedly", self._settings.server)
            finally:
                if self._session is session:
                    self._session = None
                self._link = None
                self.connected.clear()
                self._notify()
            if leave or session.server_drain is not None:
                self._target = rotate_addresses(self._target)
            if session.welcome is not None:
                failures = 0
            if self._stopping:
                return
            delay_s = full_jitter_backoff_s(
                failures,
                initial_s=self._settings.reconnect_initial_backoff_s,
                max_s=self._settings.reconnect_max_backoff_s,
            )
            failures += 1
            logger.info("reconnecting to %s in %.2fs", self._settings.server, delay_s)
            await self._wait_until(lambda: self._stopping, timeout_s=delay_s)

    async def _run_session(self, session: StreamSession) -> None:
        async with open_channel(
            self._target,
            tls=self._settings.client_tls(),
            options=channel_options(self._settings),
        ) as channel:
            stub = executor_service_pb2_grpc.ExecutorServiceStub(channel)
            call = stub.Connect(None, metadata=self._credentials)
            writer = asyncio.create_task(session.write_loop(call), name="agent stream writer")
            try:
                session.send(self._hello())
                try:
                    async with asyncio.timeout(self._settings.connect_timeout_s):
                        first = await call.read()
                except TimeoutError:
                    raise SessionLostError(
                        f"no welcome within {self._settings.connect_timeout_s:g}s"
                    ) from None
                if not isinstance(first, pb.ConnectResponse):
                    raise SessionLostError("the server closed the stream before its welcome")
                if first.WhichOneof("kind") != "welcome":
                    raise SessionLostError(f"expected a welcome, got {first.WhichOneof('kind')}")
                # Before _on_welcome sets `connected` and wakes the waiters for a link.
                self._link = Link(
                    channel,
                    first.welcome.session_id,
                    self._settings.tenant,
                    credentials=self._credentials,
                )
                self._on_welcome(session, first.welcome)
                await self._serve(session, call)
            finally:
                # No artifact call starts on a channel about to close (they wait for the next).
                self._link = None
                call.cancel()
                await _cancel_and_wait([writer], timeout_s=None)

    async def _serve(self, session: StreamSession, call: ConnectCall) -> None:
        """Reads, heartbeats and waits for a reason to end, until one of the three finishes."""
        reader = asyncio.create_task(self._read_loop(session, call), name="agent stream reader")
        heartbeat = asyncio.create_task(self._heartbeat_loop(session), name="agent heartbeat")
        ender = asyncio.create_task(self._wait_session_end(session), name="agent session end")
        tasks = [reader, heartbeat, ender]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if ender.done() and not reader.done():
                # Half-close so the server sees a clean end, and give it a moment to finish.
                session.close_requests()
                await asyncio.wait([reader], timeout=HALF_CLOSE_GRACE_S)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
        errors = [
            error
            for task in tasks
            if not task.cancelled() and (error := task.exception()) is not None
        ]
        if errors:
            raise errors[0]

    async def _read_loop(self, session: StreamSession, call: ConnectCall) -> None:
        loop = asyncio.get_running_loop()
        while True:
            response = await call.read()
            if not isinstance(response, pb.ConnectResponse):
                logger.info("the server ended the stream")
                return
            session.last_received_s = loop.time()
            self._messages_received += 1
            self._dispatch(session, response)
            if self._waiting_for_proof:
                self._notify()  # a cut artifact call waits for proof that the session lives

    async def _heartbeat_loop(self, session: StreamSession) -> None:
        loop = asyncio.get_running_loop()
        previous_s = session.heartbeat_interval_s
        while True:
            if self._attempts or session.idle_heartbeat_interval_s <= session.heartbeat_interval_s:
                interval_s = session.heartbeat_interval_s
                await asyncio.sleep(interval_s)
            else:
                # Idle: the longer interval (no lease to renew), cut short by an attempt that
                # starts meanwhile: its lease needs a heartbeat within the normal interval,
                # and the idle one may be longer than a lease.
                interval_s = session.idle_heartbeat_interval_s
                slept_from_s = loop.time()
                if await self._wait_until(lambda: bool(self._attempts), timeout_s=interval_s):
                    pace_s = session.heartbeat_interval_s
                    await asyncio.sleep(max(0.0, slept_from_s + pace_s - loop.time()))
            # The server answers each heartbeat: silence spans at most the last two sleeps.
            silent_s = loop.time() - session.last_received_s
            if silent_s >= DEAD_AFTER_HEARTBEAT_INTERVALS * max(interval_s, previous_s):
                raise SessionLostError(f"nothing from the server for {silent_s:.2f}s")
            previous_s = interval_s
            session.send(
                pb.ConnectRequest(heartbeat=pb.Heartbeat(running_attempts=self._running_protos()))
            )

    async def _wait_session_end(self, session: StreamSession) -> None:
        """Returns when the agent stops, or a server drain is done (idle) or past its deadline."""
        while not self._stopping:
            drain = session.server_drain
            if drain is None:
                await self._wait_until(
                    lambda: self._stopping or session.server_drain is not None, timeout_s=None
                )
                continue
            if self._idle():
                logger.info("server drain done; reconnecting")
                return
            remaining_s: float | None = None
            if drain.HasField("deadline"):
                deadline = drain.deadline.ToDatetime(tzinfo=UTC)
                remaining_s = (deadline - datetime.now(UTC)).total_seconds()
                if remaining_s <= 0:
                    logger.info("server drain deadline passed; reconnecting with attempts running")
                    return
            await self._wait_until(lambda: self._stopping or self._idle(), timeout_s=remaining_s)

    # --- attempts --------------------------------------------------------------------------------

    def _start(self, assignment: pb.Assignment) -> None:
        runner = AttemptRunner(
            assignment=assignment,
            registry=self._registry,
            on_progress=self._send_progress,
            stop_grace_s=self._settings.stop_grace_s,
            secrets=self._secrets,
            artifacts=AttemptArtifacts(
                key=AttemptKey.of_assignment(assignment),
                link=self._wait_for_link,
                input_artifacts=assignment.input_artifacts,
            ),
        )
        task = asyncio.create_task(self._execute(runner), name=f"attempt {runner.key}")
        self._attempt_tasks.add(task)
        task.add_done_callback(self._attempt_tasks.discard)
        self._attempts[runner.key] = LiveAttempt(runner=runner, task=task)
        self._notify()

    async def _wait_for_link(self, cut: Link | None = None) -> Link:
        """The welcomed session's link for artifact calls, waiting while there is none (a
        LinkSource). After a call on `cut` was cut, `cut` only once the server has spoken since:
        a reset connection fails the call before the stream's reader notices, and a repeat on
        that link would carry a session id the server has forgotten, on a channel about to be
        closed. Else the next session's (which adopted the attempt)."""
        heard = self._messages_received

        def usable() -> bool:
            link = self._link
            if link is None:
                return False
            return link is not cut or self._messages_received > heard

        if cut is None:
            await self._wait_until(usable, timeout_s=None)
        else:
            self._waiting_for_proof += 1
            try:
                await self._wait_until(usable, timeout_s=None)
            finally:
                self._waiting_for_proof -= 1
        assert self._link is not None  # usable() held, with no await since
        return self._link

    async def _execute(self, runner: AttemptRunner) -> None:
        todo = runner.assignment.todo
        # A fresh context of the session never races the close of the last one.
        await self.session_closer.wait_closed(runner.key.job_id, todo.session)
        started = time.perf_counter()
        with tracing.attempt_span(runner.assignment, runner.action) as span:
            result = await runner.run()
            tracing.set_outcome(span, result)
        if self.metrics is not None:
            self.metrics.attempt_ended(runner.action, time.perf_counter() - started, result)
        if runner.stop_reason is StopReason.CANCELLED:
            # The job is being stopped (or the attempt ran past its timeout): what the session
            # holds is not needed any more; a later task of it starts afresh.
            self.session_closer.close(runner.key.job_id, todo.session, "its attempt was cancelled")
        attempt = self._attempts.get(runner.key)
        if attempt is None or attempt.runner is not runner:
            logger.info("attempt %s ended after it was discarded; not reported", runner.key)
            return
        del self._attempts[runner.key]
        self._outbox[runner.key] = result
        session = self._session
        if session is not None:
            # The result hands the slot back to the server: no Credit needed (the contract).
            self._send_result(session, runner.key, result)
        self._notify()

    def _send_progress(self, progress: pb.Progress) -> None:
        session = self._session
        key = AttemptKey(progress.job_id, progress.task_id, progress.attempt)
        # Best effort: progress made while disconnected is dropped, never re-sent.
        if session is None or key not in self._attempts:
            return
        request = pb.ConnectRequest(progress=progress)
        if (size := session.report_size(request)) > session.max_report_bytes:
            logger.warning("progress of %s dropped: %d bytes is over the budget", key, size)
            return
        session.send_report(request)

    def _discard(self, key: AttemptKey, why: str) -> None:
        """Stops an attempt the server no longer wants; its result is never reported."""
        attempt = self._attempts.pop(key)
        logger.info("discarding attempt %s: %s", key, why)
        attempt.runner.stop(StopReason.DISCARDED, why)
        # Its session may have moved to another agent, or the job ended, meanwhile.
        self.session_closer.close(key.job_id, attempt.runner.assignment.todo.session, why)
        self._notify()

    async def _drain_when_requested(self) -> None:
        await self._drain_requested.wait()
        timeout_s = self._settings.drain_timeout_s
        if not await self._wait_until(self._idle, timeout_s=timeout_s):
            logger.warning(
                "drain timeout (%gs): handing back %d attempts", timeout_s, len(self._attempts)
            )
            for attempt in list(self._attempts.values()):
                attempt.runner.stop(
                    StopReason.SHUTDOWN,
                    f"the agent shut down before the attempt ended ({self._drain_reason})",
                )
            if not await self._wait_until(self._idle, timeout_s=HANDBACK_GRACE_S):
                logger.warning(
                    "stopping with %d attempts running and %d results unacknowledged",
                    len(self._attempts),
                    len(self._outbox),
                )
        self._stopping = True
        self._notify()
