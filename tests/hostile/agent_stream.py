"""Hostile ExecutorService.Connect sessions: scripts of frames and the judgement of what the
server answered.

A script is a hello (valid, random, another tenant's, the normal agent's id) and frames after
it: forged results and progress for attempts the stream was never assigned (the normal job's,
the hostile tenants', made-up ones), declines and heartbeats of other agents' attempts, credits
of extreme size, batches, random ConnectRequests, garbage bytes and invalid UTF-8. The stream
half-closes after the last frame and is read to its end.

Besides the status code (as for every call), the answers must hold:
- a welcome adopts only attempts assigned earlier to the same (tenant, agent id);
- a report is acked as accepted only for an attempt this stream holds (assigned or adopted);
- a heartbeat renews (does not list as stale) only attempts assigned to its agent.
"""

from __future__ import annotations

import queue
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from hypothesis import strategies as st

from cpa.common.v1 import agent_capabilities_pb2, error_pb2
from cpa.executor.v1 import executor_service_pb2 as ex

from .arena import DEFAULT_TENANT, HOSTILE_TENANTS, NORMAL_AGENT_ID, NORMAL_TENANT
from .calls import EXECUTOR, Outcome, failed_outcome, finding, judge, summarize
from .scheduler_requests import INVALID_UTF8, with_invalid_utf8
from .strategies import (
    KNOWN,
    enum_value,
    float_value,
    hostile_text,
    int_value,
    message_of,
    set_field,
)

Ref = tuple[str, str, int]
Identity = tuple[str, str]  # (tenant, agent id)

FORGED = "FORGED"

# Attempts the server assigned to hostile streams, by (tenant, agent id): a later hello of the
# same identity may legitimately adopt them.
ASSIGNED: defaultdict[Identity, set[Ref]] = defaultdict(set)


@dataclass(frozen=True)
class Script:
    """The frames of one agent stream: ConnectRequests, or raw bytes (garbage)."""

    frames: tuple[ex.ConnectRequest | bytes, ...]
    how: str = "script"
    rpc: str = "Connect"

    def encoded(self) -> list[bytes]:
        return [f if isinstance(f, bytes) else f.SerializeToString() for f in self.frames]

    @property
    def hello(self) -> ex.Hello | None:
        first = self.frames[0] if self.frames else None
        if isinstance(first, ex.ConnectRequest) and first.WhichOneof("kind") == "hello":
            return first.hello
        return None

    def __repr__(self) -> str:
        lines = [summarize(frame, limit=400) for frame in self.frames]
        return f"<Connect [{self.how}]\n    " + "\n    ".join(lines) + ">"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


# --- strategies ----------------------------------------------------------------------------------


def _ref() -> st.SearchStrategy[Ref]:
    made_up = st.tuples(hostile_text(), hostile_text(), int_value(32, signed=True))
    latest = st.just(None).map(KNOWN.latest_attempt)  # the normal job running now
    return st.one_of(
        latest,
        latest,
        st.integers(0, 1_000).map(KNOWN.pick_attempt),
        made_up,
    )


def _running(ref: Ref) -> ex.RunningAttempt:
    return ex.RunningAttempt(job_id=ref[0], task_id=ref[1], attempt=ref[2])


def _hello(*, others: bool, adopt: bool, targeted: bool) -> st.SearchStrategy[ex.ConnectRequest]:
    """A hello. `others`: the agent id may be the normal agent's (a take-over); `adopt`: it
    lists running attempts (of others) to be adopted; `targeted`: a well-formed hello, mostly
    in the normal job's tenant (the forgeries' target), never a random Hello message."""
    capabilities = st.one_of(
        st.builds(
            agent_capabilities_pb2.AgentCapabilities,
            actions=st.just(["noop", "echo", "wait", "fail"]),
            slots=st.sampled_from([1, 4, 0, -1, 2**31 - 1]),
        ),
        message_of(agent_capabilities_pb2.AgentCapabilities.DESCRIPTOR),
    )
    names = [*([NORMAL_AGENT_ID] if others else []), "hostile-1", "hostile-2"]
    tenants = [NORMAL_TENANT, *HOSTILE_TENANTS, ""]
    any_name = st.one_of(
        st.sampled_from(names), hostile_text().filter(lambda n: others or n != NORMAL_AGENT_ID)
    )
    any_tenant = st.one_of(st.sampled_from(tenants), hostile_text())
    hello = st.builds(
        ex.Hello,
        agent_id=st.sampled_from(names)
        if targeted
        else st.one_of(st.sampled_from(names), any_name),
        tenant=st.sampled_from([NORMAL_TENANT, NORMAL_TENANT, *tenants])
        if targeted
        else any_tenant,
        capabilities=capabilities,
        running_attempts=st.lists(_ref().map(_running), max_size=3 if adopt else 0),
        accepts_batches=st.booleans(),
    ).map(lambda h: ex.ConnectRequest(hello=h))
    if targeted:
        return hello
    return st.one_of(hello, message_of(ex.Hello.DESCRIPTOR).map(_as_hello))


def _as_hello(hello: Message) -> ex.ConnectRequest:
    assert isinstance(hello, ex.Hello)
    return ex.ConnectRequest(hello=hello)


def _report_id() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(1, 20), int_value(64, signed=True))


def _forged() -> st.SearchStrategy[ex.ConnectRequest]:
    def result(
        ref: Ref,
        report_id: int,
        outputs: Message | None,
        error: error_pb2.TaskError | None,
        cancelled: bool,
    ) -> ex.ConnectRequest:
        message = ex.Result(job_id=ref[0], task_id=ref[1], attempt=ref[2], cancelled=cancelled)
        if error is not None:
            set_field(message, ex.Result.DESCRIPTOR.fields_by_name["error"], error)
        elif outputs is not None:
            set_field(message, ex.Result.DESCRIPTOR.fields_by_name["outputs"], outputs)
        else:
            message.outputs.update({FORGED: True})
        request = ex.ConnectRequest(report_id=report_id)
        set_field(request, ex.ConnectRequest.DESCRIPTOR.fields_by_name["result"], message)
        return request

    def progress(ref: Ref, report_id: int, percent: float | None, text: str) -> ex.ConnectRequest:
        message = ex.Progress(
            job_id=ref[0], task_id=ref[1], attempt=ref[2], message=f"{FORGED} {text}"
        )
        if percent is not None:
            message.percent = percent
        return ex.ConnectRequest(report_id=report_id, progress=message)

    def decline(ref: Ref, report_id: int, accepted: bool) -> ex.ConnectRequest:
        ack = ex.AssignmentAck(
            job_id=ref[0], task_id=ref[1], attempt=ref[2], accepted=accepted, reason=FORGED
        )
        return ex.ConnectRequest(report_id=report_id, assignment_ack=ack)

    def task_error(
        code: str, text: str, retryable: bool, reason: int, details: Message | None
    ) -> error_pb2.TaskError:
        error = error_pb2.TaskError(
            code=code,
            message=text,
            retryable=retryable,
            reason=reason,  # type: ignore[arg-type]  # undeclared numbers too
        )
        if details is not None:
            # In place: the constructor copies, and a copy re-parses a too-deep Struct.
            set_field(error, error_pb2.TaskError.DESCRIPTOR.fields_by_name["details"], details)
        return error

    task_errors = st.builds(
        task_error,
        hostile_text(),
        hostile_text(),
        st.booleans(),
        enum_value(error_pb2.ErrorReason.DESCRIPTOR),
        # Deep, NaN, huge: kept bounded or dropped with a marker, never a crash.
        st.one_of(
            st.none(),
            message_of(error_pb2.TaskError.DESCRIPTOR.fields_by_name["details"].message_type),
        ),
    )
    return st.one_of(
        st.builds(
            result,
            _ref(),
            _report_id(),
            st.one_of(
                st.none(), message_of(ex.Result.DESCRIPTOR.fields_by_name["outputs"].message_type)
            ),
            st.one_of(st.none(), task_errors),
            st.booleans(),
        ),
        st.builds(
            progress,
            _ref(),
            _report_id(),
            st.one_of(st.none(), float_value(32)),
            hostile_text(),
        ),
        st.builds(decline, _ref(), _report_id(), st.booleans()),
        st.lists(_ref().map(_running), max_size=4).map(
            lambda refs: ex.ConnectRequest(heartbeat=ex.Heartbeat(running_attempts=refs))
        ),
        int_value(32, signed=True).map(
            lambda slots: ex.ConnectRequest(credit=ex.Credit(slots=slots))
        ),
    )


def _garbage() -> st.SearchStrategy[bytes]:
    """Frames that do not decode: random bytes, invalid UTF-8 in a forged report."""
    return st.one_of(
        st.binary(min_size=1, max_size=200),
        st.tuples(_forged(), st.integers(0, 50), st.sampled_from(INVALID_UTF8)).map(
            lambda p: (with_invalid_utf8(p[0], p[1], p[2]) or (b"\xff",))[0]
        ),
    )


def _in_batch(requests: list[ex.ConnectRequest]) -> ex.ConnectRequest:
    """The requests as one batch; a request already at protobuf's depth limit cannot be put in
    one (the library refuses to build it), so it is sent alone instead."""
    try:
        return ex.ConnectRequest(batch=ex.RequestBatch(requests=requests))
    except DecodeError:
        return requests[0]


def _batch(inner: st.SearchStrategy[ex.ConnectRequest]) -> st.SearchStrategy[ex.ConnectRequest]:
    batch = st.lists(inner, min_size=1, max_size=5).map(_in_batch)
    nested = batch.map(lambda b: _in_batch([b]))
    return st.one_of(batch, nested)


def _leases() -> st.SearchStrategy[ex.ConnectRequest]:
    """Heartbeats naming attempts of others (a heartbeat renews leases), and credits."""
    heartbeat = st.lists(_ref().map(_running), min_size=1, max_size=4).map(
        lambda refs: ex.ConnectRequest(heartbeat=ex.Heartbeat(running_attempts=refs))
    )
    credit = int_value(32, signed=True).map(
        lambda slots: ex.ConnectRequest(credit=ex.Credit(slots=slots))
    )
    return st.one_of(heartbeat, heartbeat, credit)


# What follows the hello, per kind of session. Each kind is a test of its own: hypothesis
# stops soon after its first findings, and one kind's finding would hide another's.
FRAMES: dict[str, st.SearchStrategy[ex.ConnectRequest | bytes]] = {
    "forged": st.one_of(_forged(), _batch(_forged())),
    "leases": _leases(),
    "random": st.one_of(
        message_of(ex.ConnectRequest.DESCRIPTOR),
        _batch(
            st.one_of(
                _hello(others=True, adopt=True, targeted=False),
                message_of(ex.ConnectRequest.DESCRIPTOR),
            )
        ),
        _hello(others=True, adopt=True, targeted=False),
        st.just(ex.ConnectRequest(drain=ex.AgentDrain(reason=FORGED))),
    ),
    "garbage": st.one_of(_forged(), _garbage()),
}


def script(kind: str) -> st.SearchStrategy[Script]:
    """A hello, then up to eight frames of the kind. Random and garbage sessions may begin
    with something else than a hello, too."""
    frames = FRAMES[kind]
    targeted = kind in ("forged", "leases")
    # Only random sessions take the normal agent's id: the take-over would stop hypothesis
    # before it tried the rest.
    hello = _hello(others=kind == "random", adopt=kind != "forged", targeted=targeted)
    first = hello if targeted else st.one_of(hello, hello, frames)
    rest = st.lists(frames, min_size=1 if targeted else 0, max_size=8)

    @st.composite
    def draw(draw_: st.DrawFn) -> Script:  # a composite: hypothesis prints the short repr
        return Script((draw_(first), *draw_(rest)), how=kind)

    return draw()


# --- judgement -----------------------------------------------------------------------------------


def _flatten(frames: tuple[ex.ConnectRequest | bytes, ...]) -> list[ex.ConnectRequest]:
    """The requests the server handles after the hello, in order (a batch's inner requests, not
    batches inside batches, as the server reads them)."""
    out: list[ex.ConnectRequest] = []
    for frame in frames[1:]:
        if isinstance(frame, bytes):
            break  # the server cannot read past garbage
        if frame.WhichOneof("kind") == "batch":
            out += [r for r in frame.batch.requests if r.WhichOneof("kind") != "batch"]
        else:
            out.append(frame)
    return out


def _responses(outcome: Outcome) -> list[ex.ConnectResponse]:
    out: list[ex.ConnectResponse] = []
    for response in outcome.responses:
        if response.WhichOneof("kind") == "batch":
            out += list(response.batch.responses)
        else:
            out.append(response)
    return out


def _ref_of(message: ex.RunningAttempt | ex.Result | ex.Progress | ex.AssignmentAck) -> Ref:
    return (message.job_id, message.task_id, message.attempt)


def judge_script(script_: Script, outcome: Outcome) -> None:
    judge(script_, outcome)
    hello = script_.hello
    if hello is None:
        return
    identity = (hello.tenant or DEFAULT_TENANT, hello.agent_id)
    responses = _responses(outcome)
    held: set[Ref] = set()
    earlier = set(ASSIGNED[identity])
    for response in responses:
        kind = response.WhichOneof("kind")
        if kind == "assignment":
            a = response.assignment
            ref = (a.job_id, a.todo.id, a.attempt)
            held.add(ref)
            ASSIGNED[identity].add(ref)
        elif kind == "welcome":
            if identity == (NORMAL_TENANT, NORMAL_AGENT_ID):
                raise finding("Connect", "hello takes over a live agent's session")(
                    f"Connect: a second hello as {identity} was welcomed while that agent is "
                    f"connected (its session is replaced)\n  request: {script_!r}"
                )
            for attempt in response.welcome.adopted_attempts:
                ref = _ref_of(attempt)
                if ref not in earlier:
                    raise finding("Connect", "hello adopts an attempt of another agent")(
                        f"Connect: the welcome adopted {ref}, never assigned to {identity}\n"
                        f"  request: {script_!r}"
                    )
                held.add(ref)
    requests = _flatten(script_.frames)
    reports: defaultdict[int, list[tuple[str, Ref]]] = defaultdict(list)
    for request in requests:
        sent = request.WhichOneof("kind")
        if sent in ("result", "progress", "assignment_ack") and request.report_id:
            reports[request.report_id].append((sent, _ref_of(getattr(request, sent))))
    for response in responses:
        if response.WhichOneof("kind") != "report_ack" or not response.report_ack.accepted:
            continue
        named = reports.get(response.report_ack.report_id, [])
        if named and all(ref not in held for _, ref in named):
            kinds = sorted({kind for kind, _ in named})
            raise finding("Connect", f"forged {'/'.join(kinds)} accepted")(
                f"Connect: report {response.report_ack.report_id} ({named}) acked as accepted "
                f"from a stream that does not hold the attempt (holds {sorted(held)})\n"
                f"  request: {script_!r}"
            )
    heartbeats = [r.heartbeat for r in requests if r.WhichOneof("kind") == "heartbeat"]
    acks = [r.heartbeat_ack for r in responses if r.WhichOneof("kind") == "heartbeat_ack"]
    for heartbeat, ack in zip(heartbeats, acks, strict=False):
        stale = {_ref_of(a) for a in ack.stale_attempts}
        renewed = {_ref_of(a) for a in heartbeat.running_attempts} - stale
        foreign = renewed - held - ASSIGNED[identity]
        if foreign:
            raise finding("Connect", "heartbeat renews another agent's attempt")(
                f"Connect: a heartbeat of {identity} renewed {sorted(foreign)}, not its own\n"
                f"  request: {script_!r}"
            )


# --- a stream that holds its attempt -------------------------------------------------------------


class HeldStream:
    """An agent stream driven step by step (hello, credit, wait for the assignment, report), to
    send hostile reports for an attempt the stream does hold."""

    def __init__(self, channel: Any, hello: ex.Hello, *, timeout_s: float) -> None:
        self._outgoing: queue.Queue[bytes | None] = queue.Queue()
        connect = channel.stream_stream(
            f"/{EXECUTOR.full_name}/Connect", None, ex.ConnectResponse.FromString
        )
        self._call = connect(iter(self._outgoing.get, None), timeout=timeout_s)
        self.send(ex.ConnectRequest(hello=hello))

    def send(self, request: ex.ConnectRequest) -> None:
        self._outgoing.put(request.SerializeToString())

    def next(self, kind: str) -> ex.ConnectResponse | None:
        """The next response of the kind (inside batches too; others are skipped), or None when
        the stream ends first (its status: `close()`)."""
        try:
            for response in self._call:
                batched = response.WhichOneof("kind") == "batch"
                messages: list[ex.ConnectResponse] = (
                    list(response.batch.responses) if batched else [response]
                )
                for message in messages:
                    if message.WhichOneof("kind") == kind:
                        return message
        except grpc.RpcError:
            pass
        return None

    def close(self) -> Outcome:
        """Half-closes and reads the stream to its end."""
        self._outgoing.put(None)
        try:
            for _ in self._call:
                pass
        except grpc.RpcError as error:
            return failed_outcome(error)
        return Outcome(grpc.StatusCode.OK, "")
