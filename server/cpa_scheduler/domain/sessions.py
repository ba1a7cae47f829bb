"""Task sessions: the tasks of one job that share what an agent keeps for them (a browser
context), so they run on one agent, one at a time, and start again together when it is lost.

The rules, all pure (the Job calls them inside its transitions):
- **Default.** A browser action (playwright, click, type, wait_for) without a session gets the
  job's default session "browser" when the job is planned (`with_default_sessions`), so all the
  browser steps of a job share one context unless the plan names others.
- **Affinity.** A session is bound to the agent of its task that runs or has succeeded (there is
  at most one such agent, by the rules below); unbound, its next task goes to any capable agent,
  and the first to start binds it. A task of a bound session waits QUEUED for that agent only:
  its `agent_id` holds the agent while it is QUEUED (the pin, which the work queue turns into
  the requirement, so the Redis queue needs no other state), and assigning it to another agent
  is refused as a stale attempt (`check_affinity`).
- **One at a time.** A task of a session stays PENDING while another task of the session is
  QUEUED or RUNNING (`busy`): the binding is then always known when a task is queued, and the
  steps of one context never run concurrently. Independent tasks of one session run in the
  order they were added to the job.
- **Recovery.** When the bound agent is lost (an attempt of the session LOST, or the agent away
  for a lease while the session's next task waits for it) the session restarts (`restart`):
  its tasks that ran or wait (SUCCEEDED, QUEUED, RUNNING) go back to PENDING, as do the tasks
  outside the session QUEUED behind one of them, a SessionRestarted event says so, and the
  session runs again from its first task on whichever agent takes it. Tasks outside the session
  that already started or ended are not run again: what they consumed stays consumed. The re-run
  tasks are charged to no retry budget; the restart costs one loss (`Task.losses`, bounded by
  max_redeliveries) of the task that was lost or waited for the lost agent, so a session whose
  agents keep disappearing ends (that task FAILED, REDELIVERY_EXHAUSTED) after at most
  max_redeliveries restarts per task of the session.
- **End.** A session ends when none of its tasks is PENDING, WAITING_APPROVAL, QUEUED or
  RUNNING (its last task ended, or the job was stopped); every agent that ran an attempt of it
  is then told (`ended`, carried out by the orchestrator as SessionEnded), and the agent it
  moved away from is told when it restarts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from .errors import Reason
from .events import SessionRestarted, TaskError
from .states import ACTIVE_TASK_STATES, AttemptState, TaskState
from .todo import ActionType, ToDo

if TYPE_CHECKING:  # the Job calls these functions; they use its internals (JobCore)
    from .job_core import JobCore
    from .job_types import Task

DEFAULT_SESSION = "browser"
"""The session of a job's browser actions that name none."""

BROWSER_ACTIONS: frozenset[str] = frozenset(
    {ActionType.PLAYWRIGHT, ActionType.CLICK, ActionType.TYPE, ActionType.WAIT_FOR}
)

# Why SessionEnded is sent (SessionEnded.reason on the wire).
ENDED_COMPLETED = "completed"
ENDED_JOB = "job_ended"
ENDED_RESTARTED = "restarted"

SESSION_RESTARTED_CODE = "SESSION_RESTARTED"

# States in which a task of a session still has to run (the session is not over).
_UNFINISHED = frozenset(
    {TaskState.PENDING, TaskState.WAITING_APPROVAL, TaskState.QUEUED, TaskState.RUNNING}
)
# What a restart sends back to PENDING: the tasks that ran or wait to.
_RESET = frozenset({TaskState.SUCCEEDED, TaskState.QUEUED, TaskState.RUNNING})


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """Tell `agent_id` that `session` of the job is over (ConnectResponse.session_ended)."""

    session: str
    agent_id: str
    reason: str


def with_default_session(todo: ToDo) -> ToDo:
    """`todo`, in the default session when it is a browser action that names none."""
    if todo.session or todo.action not in BROWSER_ACTIONS:
        return todo
    return dataclasses.replace(todo, session=DEFAULT_SESSION)


def with_default_sessions(todos: Iterable[ToDo]) -> list[ToDo]:
    return [with_default_session(todo) for todo in todos]


def tasks_of(job: JobCore, session: str) -> list[Task]:
    """The tasks of `session`, in the order they were added to the job (cached per aggregate)."""
    index = job._session_index
    if index is None:
        index = {}
        for task in job.tasks.values():
            if task.todo.session:
                index.setdefault(task.todo.session, []).append(task)
        job._session_index = index
    return index.get(session, [])


def bound_agent(job: JobCore, session: str) -> str:
    """The agent `session` is bound to: that of its task RUNNING or SUCCEEDED ("" unbound)."""
    for task in tasks_of(job, session):
        if task.state is TaskState.RUNNING or task.state is TaskState.SUCCEEDED:
            return task.agent_id
    return ""


def busy(job: JobCore, task: Task) -> bool:
    """Whether another task of `task`'s session is QUEUED or RUNNING (then `task` waits)."""
    return any(
        other is not task and other.state in ACTIVE_TASK_STATES
        for other in tasks_of(job, task.todo.session)
    )


def pin(job: JobCore, task: Task) -> None:
    """`task` of a session was just QUEUED: it waits for the agent its session is bound to."""
    task.agent_id = bound_agent(job, task.todo.session)


def check_affinity(task: Task, agent_id: str) -> bool:
    """Whether the QUEUED `task` may start on `agent_id` (its pin is empty or that agent)."""
    return not task.agent_id or task.agent_id == agent_id


def ended(job: JobCore, touched: Iterable[str]) -> list[SessionEnd]:
    """The sessions among `touched` that have nothing left to run, one SessionEnd per agent
    that ran an attempt of them (sorted, so the effects are deterministic)."""
    reason = ENDED_JOB if job.cancel_requested or job.is_terminal else ENDED_COMPLETED
    ends: list[SessionEnd] = []
    for session in sorted(touched):
        tasks = tasks_of(job, session)
        if any(task.state in _UNFINISHED for task in tasks):
            continue
        agents = {attempt.agent_id for task in tasks for attempt in task.attempts}
        ends += [SessionEnd(session, agent, reason) for agent in sorted(agents) if agent]
    return ends


def restart(
    job: JobCore,
    charged: Task,
    *,
    reason: str,
    from_agent: str,
    max_redeliveries: int,
    now: datetime,
) -> None:
    """Restart `charged`'s session after its agent `from_agent` was lost (see the module doc).

    `charged` is the task that was lost (RUNNING, its attempt already ended LOST) or waited
    QUEUED for the lost agent; the restart is one more of its losses: beyond
    `max_redeliveries` it fails instead (REDELIVERY_EXHAUSTED) and nothing restarts.
    """
    session = charged.todo.session
    charged.losses += 1
    if charged.losses > max_redeliveries:
        if charged.state is TaskState.QUEUED:
            job._withdraw(charged)
        final = TaskError(
            code="LOST",
            message=f"session {session!r} lost its agent {charged.losses} times while task "
            f"{charged.id!r} ran or waited for it (bound: {max_redeliveries} redeliveries); its "
            "agents keep disappearing",
            reason=Reason.REDELIVERY_EXHAUSTED,
        )
        job._fail_task(charged, final, now)
        return
    progress = job._progress
    reset = [task for task in tasks_of(job, session) if task.state in _RESET]
    # Outside the session, QUEUED for an output that is run again (by id: Task is unhashable).
    behind: dict[str, Task] = {}
    for task in reset:
        if task.state is TaskState.SUCCEEDED:
            for index in progress.dependents[progress.position[task.id]]:
                dependent = progress.tasks[index]
                if dependent.state is TaskState.QUEUED and dependent.todo.session != session:
                    behind[dependent.id] = dependent
    job._record(
        SessionRestarted(
            session=session,
            reason=reason,
            from_agent=from_agent,
            task_ids=tuple(task.id for task in reset),
        ),
        now,
    )
    error = TaskError(
        code=SESSION_RESTARTED_CODE,
        message=f"session {session!r} restarts from its first task: {reason}",
        retryable=True,
        reason=Reason.SESSION_RESTARTED,
    )
    for task in [*reset, *behind.values()]:
        if task.state is TaskState.QUEUED:
            job._withdraw(task)
        elif task.state is TaskState.RUNNING and task is not charged:
            # Cannot happen while sessions run one task at a time; kept so that an attempt is
            # never left running unfenced: it ends LOST and its agent is told to stop.
            job._end_attempt(task, AttemptState.LOST, now, error)
            job._cancel_attempt(task)
        task.outputs = None
        task.end_time = None
        task.next_attempt_time = None
        task.agent_id = ""
        job._move_task(task, TaskState.PENDING, now, error=error)
    if from_agent:
        job.changes.sessions_ended.append(SessionEnd(session, from_agent, ENDED_RESTARTED))
    job._settle(now)
