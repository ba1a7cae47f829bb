"""The agent's side of the stream protocol: what it says to the server and how it answers what
the server says. A part of Connection (its base class), apart because the protocol's messages are a
concern of their own; the state they touch is Connection's."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cpa.common.v1 import error_pb2, todo_pb2
from cpa.executor.v1 import executor_service_pb2 as pb
from cpa_agent.reconnect import hello_request
from cpa_agent.runner import AttemptKey, AttemptRunner, StopReason, action_name, result_too_large
from cpa_agent.sessions import SessionCloser
from cpa_agent.settings import AgentSettings
from cpa_agent.stream import StreamSession

if TYPE_CHECKING:
    from cpa_agent.executors.registry import ExecutorRegistry

# Logged under the connection's name: one logger for the whole session.
logger = logging.getLogger("cpa_agent.connection")

# AssignmentAck.reason when the agent declines an assignment (the server queues the task again).
DECLINE_AGENT_DRAINING = "AGENT_DRAINING"
DECLINE_SERVER_DRAINING = "SERVER_DRAINING"
DECLINE_NO_FREE_SLOT = "NO_FREE_SLOT"


def _reason_name(reason: error_pb2.ErrorReason.ValueType) -> str:
    try:
        return error_pb2.ErrorReason.Name(reason)
    except ValueError:
        return str(reason)


@dataclass(eq=False, kw_only=True)
class LiveAttempt:
    """An attempt running here: its runner and the task that runs it."""

    runner: AttemptRunner
    task: asyncio.Task[None]


class ServerMessages:
    """Hello, results, credits out; welcome, assignments, cancels, acks, proposals in."""

    _settings: AgentSettings
    _registry: ExecutorRegistry
    _offered_actions: frozenset[str]
    _offered_capabilities: frozenset[str]
    _attempts: dict[AttemptKey, LiveAttempt]
    _outbox: dict[AttemptKey, pb.Result]
    _session: StreamSession | None
    _last_session_id: str
    _drain_reason: str | None
    session_closer: SessionCloser
    connected: asyncio.Event
    sessions_started: int

    if TYPE_CHECKING:
        # Connection's; declared so this part type-checks on its own.
        def _notify(self) -> None: ...
        def _free_slots(self) -> int: ...
        def _may_take_work(self, session: StreamSession) -> bool: ...
        def _discard(self, key: AttemptKey, why: str) -> None: ...
        def _start(self, assignment: pb.Assignment) -> None: ...

    # --- messages to the server ------------------------------------------------------------------

    def _running_protos(self) -> list[pb.RunningAttempt]:
        return [key.to_proto() for key in sorted(self._attempts)]

    def _hello(self) -> pb.ConnectRequest:
        settings = self._settings
        # Checked at every hello: an executor may become available (or not) between sessions.
        actions = self._registry.advertised_actions()
        capabilities = sorted(
            set(settings.capabilities) | set(self._registry.capabilities(actions))
        )
        self._offered_actions = frozenset(actions)
        self._offered_capabilities = frozenset(capabilities)
        return hello_request(
            settings,
            actions=actions,
            capabilities=capabilities,
            running_attempts=self._running_protos(),
            resume_session_id=self._last_session_id,
        )

    def _send_result(self, session: StreamSession, key: AttemptKey, result: pb.Result) -> None:
        request = pb.ConnectRequest(result=result)
        size, limit = session.report_size(request), session.max_report_bytes
        if size > limit:
            # Sent as it is, it would end the stream, and again after every reconnect.
            logger.warning("result of %s is %d bytes (limit %d): failing it", key, size, limit)
            result = result_too_large(result, size=size, limit=limit)
            self._outbox[key] = result  # also what a later session sends
            request = pb.ConnectRequest(result=result)
        report_id = session.send_report(request)
        session.pending_results[report_id] = key

    def _send_credit(self, session: StreamSession, slots: int) -> None:
        if slots > 0 and self._may_take_work(session):
            session.send(pb.ConnectRequest(credit=pb.Credit(slots=slots)))

    # --- messages from the server ----------------------------------------------------------------

    def _on_welcome(self, session: StreamSession, welcome: pb.Welcome) -> None:
        session.welcome = welcome
        self._last_session_id = welcome.session_id
        session.last_received_s = asyncio.get_running_loop().time()
        if welcome.HasField("heartbeat_interval"):
            interval_s = welcome.heartbeat_interval.ToTimedelta().total_seconds()
            if interval_s > 0:
                session.heartbeat_interval_s = interval_s
        idle_s = welcome.idle_heartbeat_interval.ToTimedelta().total_seconds()
        session.idle_heartbeat_interval_s = max(idle_s, session.heartbeat_interval_s)
        adopted = {AttemptKey.from_proto(attempt) for attempt in welcome.adopted_attempts}
        for key in [key for key in self._attempts if key not in adopted]:
            self._discard(key, "not adopted by the server")
        self._session = session
        self.sessions_started += 1
        self.connected.set()
        logger.info(
            "connected to %s: session %s on replica %s, heartbeat every %gs (%gs idle), %d attempts"
            " adopted,"
            " messages of at most %d bytes out and %s in",
            self._settings.server,
            welcome.session_id,
            welcome.replica_id,
            session.heartbeat_interval_s,
            session.idle_heartbeat_interval_s,
            len(adopted),
            session.max_report_bytes,
            welcome.max_assignment_bytes or "unknown",
        )
        if self._drain_reason is not None:
            session.send(pb.ConnectRequest(drain=pb.AgentDrain(reason=self._drain_reason)))
        for key, result in list(self._outbox.items()):  # _send_result may replace one
            self._send_result(session, key, result)
        self._send_credit(session, self._free_slots())
        self._notify()

    def _dispatch(self, session: StreamSession, response: pb.ConnectResponse) -> None:
        kind = response.WhichOneof("kind")
        if kind == "batch":
            for inner in response.batch.responses:
                if inner.WhichOneof("kind") in ("batch", "welcome"):
                    logger.warning("ignoring a %s inside a batch", inner.WhichOneof("kind"))
                else:
                    self._dispatch(session, inner)
        elif kind == "assignment":
            self._on_assignment(session, response.assignment)
        elif kind == "cancel":
            self._on_cancel(response.cancel)
        elif kind == "report_ack":
            self._on_report_ack(session, response.report_ack)
        elif kind == "heartbeat_ack":
            self._on_heartbeat_ack(session, response.heartbeat_ack)
        elif kind == "drain":
            logger.info("the server drains: %s", response.drain.reason or "no reason given")
            session.server_drain = response.drain
            self._notify()
        elif kind == "session_ended":
            ended = response.session_ended
            self.session_closer.close(
                ended.job_id, ended.session, f"the scheduler ended it ({ended.reason or 'ended'})"
            )
        elif kind == "call_for_proposals":
            self._on_call_for_proposals(session, response.call_for_proposals)
        elif kind == "proposal_decision":
            decision = response.proposal_decision
            logger.info("proposal %s accepted: %s", decision.cfp_id, decision.accepted)
        else:
            logger.warning("ignoring unexpected server message %r", kind)

    def _on_assignment(self, session: StreamSession, assignment: pb.Assignment) -> None:
        key = AttemptKey.of_assignment(assignment)
        decline_reason = ""
        if key in self._attempts or key in self._outbox:
            # A redelivery of an attempt already here: ignore it, do not run it twice. First, so
            # a drain never declines it (the server would queue again a task still running here).
            logger.info("attempt %s assigned again; already taken", key)
        elif self._drain_reason is not None:
            decline_reason = DECLINE_AGENT_DRAINING
        elif session.server_drain is not None:
            decline_reason = DECLINE_SERVER_DRAINING
        elif not self._free_slots():
            decline_reason = DECLINE_NO_FREE_SLOT
        if decline_reason:
            # Acceptance needs no message (the contract); only a decline is sent.
            session.send(
                pb.ConnectRequest(
                    assignment_ack=pb.AssignmentAck(
                        job_id=key.job_id,
                        task_id=key.task_id,
                        attempt=key.attempt,
                        accepted=False,
                        reason=decline_reason,
                    )
                )
            )
        if decline_reason:
            logger.info("declined attempt %s: %s", key, decline_reason)
        elif key not in self._attempts and key not in self._outbox:
            self._start(assignment)

    def _on_cancel(self, cancel: pb.CancelAttempt) -> None:
        key = AttemptKey(cancel.job_id, cancel.task_id, cancel.attempt)
        attempt = self._attempts.get(key)
        if attempt is None:
            logger.info("cancel of %s: not running here", key)
            return
        attempt.runner.stop(StopReason.CANCELLED, cancel.reason or "cancelled by the scheduler")

    def _on_report_ack(self, session: StreamSession, ack: pb.ReportAck) -> None:
        key = session.pending_results.pop(ack.report_id, None)
        if key is None:
            return  # a progress report, or a result already acked
        if not ack.accepted:
            logger.warning("the server refused the result of %s: %s", key, _reason_name(ack.reason))
        self._outbox.pop(key, None)
        self._notify()

    def _on_heartbeat_ack(self, session: StreamSession, ack: pb.HeartbeatAck) -> None:
        freed_slots = 0
        for stale in ack.stale_attempts:
            key = AttemptKey.from_proto(stale)
            if key in self._attempts:
                self._discard(key, "no longer current at the server")
                freed_slots += 1
        # No result will carry these slots' credit back, so it goes now.
        self._send_credit(session, freed_slots)

    def _on_call_for_proposals(self, session: StreamSession, cfp: pb.CallForProposals) -> None:
        available = self._can_take(cfp.todo)
        session.send(
            pb.ConnectRequest(
                offer=pb.Offer(
                    cfp_id=cfp.cfp_id,
                    available=available,
                    # Load as cost: the least busy agent wins.
                    cost=float(len(self._attempts)) if available else 0.0,
                )
            )
        )

    def _can_take(self, todo: todo_pb2.ToDo) -> bool:
        session = self._session
        return (
            session is not None
            and self._may_take_work(session)
            and self._free_slots() > 0
            and action_name(todo) in self._offered_actions
            and set(todo.required_capabilities) <= self._offered_capabilities
            and all(
                self._settings.labels.get(name) == value
                for name, value in todo.required_labels.items()
            )
        )
