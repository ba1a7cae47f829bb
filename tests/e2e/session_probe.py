"""A tiny executor that keeps "sessions" the way a browser executor keeps contexts, and records
which agent ran what and which sessions it was asked to close (tests of task sessions).

It is a real executor registered in real agents: the agents, the scheduler and the stream are the
product's own; only the action is a probe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cpa.common.v1 import error_pb2, todo_pb2
from cpa.scheduler.v1 import job_pb2
from cpa_agent import ExecutorRegistry, builtin_registry
from cpa_agent.executors.base import ExecutionContext
from cpa_client import SchedulerClient

from .conftest import (
    EVENT_TIMEOUT_S,
    Agents,
    collect_events,
    finished,
    first_event,
    task_reached,
    todo,
    todos_spec,
)


@dataclass
class Recorder:
    """What the probes of every agent saw, in order."""

    runs: list[tuple[str, str, str, str]] = field(default_factory=list)
    """(agent, job_id, task_id, session) when an attempt started."""
    log: list[tuple[str, str, str]] = field(default_factory=list)
    """("start" | "end", job_id, task_id) of every attempt, in order."""
    closes: list[tuple[str, str, str]] = field(default_factory=list)
    """(agent, job_id, session) per close_session call."""
    open_sessions: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    """Per agent, the (job_id, session) it holds a "context" for."""
    block_once: set[str] = field(default_factory=set)
    """Task ids whose next run blocks until it is cancelled (the first run of each)."""
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        """Waits until predicate() holds, re-checked on every record (bounded)."""

        async def wait() -> None:
            while not predicate():
                await self._changed.wait()

        try:
            await asyncio.wait_for(wait(), EVENT_TIMEOUT_S)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}: {self}") from None

    def agents_of(self, job_id: str) -> list[tuple[str, str]]:
        """(agent, task_id) of the job's attempts, in the order they started."""
        return [(agent, task) for agent, job, task, _ in self.runs if job == job_id]


class SessionProbe:
    """Action `action`: opens the task's session on first use, records the run, returns who
    ran it; `close_session` drops the session and records the call."""

    def __init__(self, action: str, agent: str, recorder: Recorder) -> None:
        self.action = action
        self._agent = agent
        self._recorder = recorder

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        recorder = self._recorder
        held = recorder.open_sessions.setdefault(self._agent, set())
        fresh = (ctx.job_id, ctx.session) not in held
        held.add((ctx.job_id, ctx.session))
        recorder.runs.append((self._agent, ctx.job_id, ctx.task_id, ctx.session))
        recorder.log.append(("start", ctx.job_id, ctx.task_id))
        recorder.changed()
        try:
            if ctx.task_id in recorder.block_once:
                recorder.block_once.discard(ctx.task_id)
                await asyncio.Event().wait()  # until cancelled (the agent dies or is told)
            return {"agent": self._agent, "session": ctx.session, "fresh_context": fresh}
        finally:
            recorder.log.append(("end", ctx.job_id, ctx.task_id))
            recorder.changed()

    async def close_session(self, job_id: str, session: str) -> None:
        self._recorder.open_sessions.setdefault(self._agent, set()).discard((job_id, session))
        self._recorder.closes.append((self._agent, job_id, session))
        self._recorder.changed()


def probe_registry(agent: str, recorder: Recorder, action: str = "playwright") -> ExecutorRegistry:
    """The built-in executors (echo, wait, ...) plus a probe for `action`."""
    registry = builtin_registry()
    registry.register(SessionProbe(action, agent, recorder))
    return registry


# --- scenarios, run by the embedded (tests/e2e) and distributed (tests/distributed) suites ------


async def stop_agent(agents: Agents, agent_id: str) -> None:
    """Ends the agent's process-side life at once: its stream breaks mid-attempt (no result)."""
    for agent, task in agents.running:
        if agent.settings.agent_id == agent_id:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return
    raise AssertionError(f"no agent {agent_id!r}")


def chain(*task_ids: str, action: str = "playwright", **fields: Any) -> list[todo_pb2.ToDo]:
    """Tasks that each depend on the one before."""
    return [
        todo(task_id, action, depends_on=task_ids[i - 1 : i], **fields)
        for i, task_id in enumerate(task_ids)
    ]


async def affinity_and_end(client: SchedulerClient, agents: Agents, recorder: Recorder) -> None:
    """Four browser steps without a session (the default "browser" one), two of them
    independent: all on one agent, one at a time, and that agent (only) is told at the end."""
    await agents.start("agent-1", registry=probe_registry("agent-1", recorder), slots=2)
    await agents.start("agent-2", registry=probe_registry("agent-2", recorder), slots=2)
    spec = todos_spec(
        todo("login", "playwright"),
        todo("open", "playwright", depends_on=["login"]),
        todo("list", "playwright", depends_on=["login"]),
        todo("download", "playwright", depends_on=["open", "list"]),
    )
    scheduled = await client.schedule_job(spec)
    job_id = scheduled.job.job_id
    # The default session is applied at submission: the job says so.
    assert [t.todo.session for t in scheduled.job.tasks] == ["browser"] * 4

    job = await finished(client, job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    ran = recorder.agents_of(job_id)
    holder = ran[0][0]
    assert ran == [(holder, "login"), (holder, "open"), (holder, "list"), (holder, "download")]
    # One at a time: every attempt ended before the next started (list and open are
    # independent, yet never overlapped).
    assert [(kind, task) for kind, job, task in recorder.log if job == job_id] == [
        (kind, task) for task in ("login", "open", "list", "download") for kind in ("start", "end")
    ]
    assert {t.todo.id: t.attempts[0].agent_id for t in job.tasks} == dict.fromkeys(
        ["login", "open", "list", "download"], holder
    )

    await recorder.wait_for(
        lambda: (holder, job_id, "browser") in recorder.closes, "the session's end on its agent"
    )
    assert [c for c in recorder.closes if c[1] == job_id] == [(holder, job_id, "browser")]
    assert recorder.open_sessions[holder] == set()


async def restart_on_loss(client: SchedulerClient, agents: Agents, recorder: Recorder) -> None:
    """The agent holding a session dies in its third step: the session runs again from its
    first step on the other agent, the events say so, a task outside the session that already
    ran is not run again, and the job succeeds."""
    await agents.start("agent-1", registry=probe_registry("agent-1", recorder), slots=2)
    await agents.start("agent-2", registry=probe_registry("agent-2", recorder), slots=2)
    recorder.block_once.add("c")
    spec = todos_spec(
        *chain("a", "b", "c", "d", session="portal"),
        todo("outside", "echo", params={"x": 1}, depends_on=["a"]),
    )
    job_id = (await client.schedule_job(spec)).job.job_id
    await recorder.wait_for(
        lambda: any(r[1:3] == (job_id, "c") for r in recorder.runs), "task c running"
    )
    holder = next(agent for agent, job, task, _ in recorder.runs if (job, task) == (job_id, "c"))
    survivor = "agent-2" if holder == "agent-1" else "agent-1"
    await stop_agent(agents, holder)

    events = await collect_events(client, job_id)
    job = await client.get_job(job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    restarts = [e.session_restarted for e in events if e.WhichOneof("kind") == "session_restarted"]
    assert len(restarts) == 1
    (restart,) = restarts
    assert (restart.session, restart.from_agent, list(restart.task_ids)) == (
        "portal",
        holder,
        ["a", "b", "c"],
    )
    assert holder in restart.reason
    # From the first step again, on the survivor, in order, in a fresh context there.
    runs = [(agent, task) for agent, job, task, _ in recorder.runs if job == job_id]
    assert runs == [
        (holder, "a"),
        (holder, "b"),
        (holder, "c"),
        (survivor, "a"),
        (survivor, "b"),
        (survivor, "c"),
        (survivor, "d"),
    ]
    tasks = {t.todo.id: t for t in job.tasks}
    assert tasks["a"].outputs["fresh_context"] is True
    assert [job_pb2.AttemptState.Name(a.state) for a in tasks["c"].attempts] == [
        "ATTEMPT_STATE_LOST",
        "ATTEMPT_STATE_SUCCEEDED",
    ]
    # The succeeded steps re-ran uncharged: one attempt each per run, both succeeded.
    assert [a.agent_id for a in tasks["a"].attempts] == [holder, survivor]
    assert tasks["outside"].attempts[0].state == job_pb2.ATTEMPT_STATE_SUCCEEDED
    assert len(tasks["outside"].attempts) == 1  # already ran: not run again
    # The tasks that went back say why, in their events.
    back = [
        e.task_state_changed
        for e in events
        if e.WhichOneof("kind") == "task_state_changed"
        and e.task_state_changed.to_state == job_pb2.TASK_STATE_PENDING
        and e.task_state_changed.from_state != job_pb2.TASK_STATE_UNSPECIFIED
    ]
    assert {(c.task_id, c.error.reason) for c in back} >= {
        ("a", error_pb2.ERROR_REASON_SESSION_RESTARTED),
        ("c", error_pb2.ERROR_REASON_SESSION_RESTARTED),
    }
    await recorder.wait_for(
        lambda: (survivor, job_id, "portal") in recorder.closes, "the session's end on the survivor"
    )


async def cancel_closes(client: SchedulerClient, agents: Agents, recorder: Recorder) -> None:
    """A job cancelled in the middle of a session: its agent closes the session."""
    await agents.start("agent-1", registry=probe_registry("agent-1", recorder), slots=2)
    recorder.block_once.add("b")
    job_id = (await client.schedule_job(todos_spec(*chain("a", "b", "c")))).job.job_id
    await recorder.wait_for(
        lambda: any(r[1:3] == (job_id, "b") for r in recorder.runs), "task b running"
    )
    await client.cancel_job(job_id, reason="enough")
    job = await finished(client, job_id)
    assert job.state == job_pb2.JOB_STATE_CANCELLED
    await recorder.wait_for(
        lambda: ("agent-1", job_id, "browser") in recorder.closes, "the session closed on cancel"
    )
    assert recorder.open_sessions["agent-1"] == set()


async def restart_when_gone_between_steps(
    client: SchedulerClient, agents: Agents, recorder: Recorder
) -> None:
    """The agent holding a session leaves between two steps (no attempt of it runs, so no lease
    expires): once it has been away for a lease, the session restarts on another agent."""
    await agents.start(
        "agent-1", registry=probe_registry("agent-1", recorder), labels={"gate": "no"}
    )
    spec = todos_spec(
        todo("a", "playwright"),
        # b waits for a and for a gate only agent-2 can open: agent-1 is gone by then.
        todo("gate", "echo", params={"x": 1}, required_labels={"gate": "yes"}),
        todo("b", "playwright", depends_on=["a", "gate"]),
    )
    job_id = (await client.schedule_job(spec)).job.job_id
    # Stored as succeeded (not only ended on the agent), so no lease of agent-1 remains.
    await first_event(client, job_id, task_reached("a", job_pb2.TASK_STATE_SUCCEEDED))
    await stop_agent(agents, "agent-1")
    await agents.start(
        "agent-2", registry=probe_registry("agent-2", recorder), labels={"gate": "yes"}
    )
    events = await collect_events(client, job_id)
    job = await client.get_job(job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    (restart,) = [
        e.session_restarted for e in events if e.WhichOneof("kind") == "session_restarted"
    ]
    assert (restart.session, restart.from_agent, list(restart.task_ids)) == (
        "browser",
        "agent-1",
        ["a", "b"],
    )
    assert "went away" in restart.reason
    assert recorder.agents_of(job_id) == [("agent-1", "a"), ("agent-2", "a"), ("agent-2", "b")]
