"""The job aggregate: a job, its tasks and attempts, and every rule that moves them.

All state changes of a job go through the methods here, inside one storage transaction each;
they check the transition (fencing stale attempts), record events with the next sequence
numbers and note the effects to carry out after commit (tasks to queue, attempts to cancel).
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from . import sessions as session_rules
from .artifacts import MAX_ARTIFACTS_PER_TASK, ArtifactRecord
from .errors import DomainError, FailedPrecondition, NotFound, Reason
from .events import (
    EventPayload,
    JobCancelRequested,
    JobEvent,
    JobStateChanged,
    TaskArtifactStored,
    TaskError,
    TaskProgress,
    TaskRetryScheduled,
    TaskStateChanged,
)
from .retry import DEFAULT_RETRY_POLICY, RetryPolicy
from .sessions import SessionEnd
from .states import (
    ATTEMPT_STATE_MACHINE,
    JOB_STATE_MACHINE,
    TASK_STATE_MACHINE,
    AttemptState,
    JobState,
    TaskState,
)
from .task_graph import TaskGraph
from .todo import ToDo

# Tasks that hold a slot of the job's parallelism budget.
_ACTIVE = frozenset({TaskState.QUEUED, TaskState.RUNNING})


class SourceKind(StrEnum):
    """The form in which the work was asked for."""

    TEXT = "text"
    INTENT = "intent"
    TODOS = "todos"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSource:
    """What the caller asked for; for TODOS the steps themselves are the job's tasks."""

    kind: SourceKind
    text: str = ""
    intent: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobOptions:
    """How to run the job. `max_parallelism` is resolved (> 0) before the job is created."""

    max_parallelism: int
    context: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    deadline: datetime | None = None
    default_retry_policy: RetryPolicy | None = None
    callback_url: str = ""


@dataclass(slots=True, kw_only=True)
class Attempt:
    """One dispatch of a task to an agent."""

    number: int
    agent_id: str
    state: AttemptState
    start_time: datetime
    end_time: datetime | None = None
    error: TaskError | None = None
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    """What the attempt stored (Job.store_artifact), in the order first stored."""


@dataclass(slots=True, kw_only=True)
class Task:
    """A ToDo inside a job. `failures` counts against max_attempts, `losses` against redelivery."""

    todo: ToDo
    state: TaskState = TaskState.PENDING
    attempt: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    outputs: dict[str, Any] | None = None
    error: TaskError | None = None
    failures: int = 0
    losses: int = 0
    agent_id: str = ""
    lease_until: datetime | None = None
    next_attempt_time: datetime | None = None
    start_by: datetime | None = None
    """While QUEUED with a schedule-to-start timeout: when it fails unless an agent took it."""
    timeout_at: datetime | None = None
    """While RUNNING with a timeout: when the server stops waiting for the attempt's result."""
    queue_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None

    @property
    def id(self) -> str:
        return self.todo.id

    @property
    def artifacts(self) -> list[ArtifactRecord]:
        """Every attempt's artifacts, oldest attempt first (failed attempts' included)."""
        return [artifact for attempt in self.attempts for artifact in attempt.artifacts]


@dataclass(frozen=True, slots=True)
class AttemptRef:
    """Names one attempt of one task of one job: the unit of dispatch and fencing."""

    job_id: str
    task_id: str
    attempt: int


@dataclass(slots=True, kw_only=True)
class JobChanges:
    """What one mutation produced, for storage to write and the orchestrator to carry out."""

    events: list[JobEvent] = field(default_factory=list)
    dirty_tasks: set[str] = field(default_factory=set)
    queued: list[str] = field(default_factory=list)
    # QUEUED tasks that left the queue without being taken (cancelled, never started in time):
    # their entries are withdrawn from the work queue after commit.
    withdrawn: list[str] = field(default_factory=list)
    # The agents withdrawn tasks of sessions were pinned to (their queue entries are there).
    withdrawn_pins: dict[str, str] = field(default_factory=dict)
    cancels: list[tuple[AttemptRef, str]] = field(default_factory=list)
    # Sessions whose tasks changed state (their end is checked in take_changes), and the
    # agents to tell that a session of theirs ended.
    sessions_touched: set[str] = field(default_factory=set)
    sessions_ended: list[SessionEnd] = field(default_factory=list)


class StaleAttempt(FailedPrecondition):
    """A report or assignment for an attempt that is not the task's current one (fencing)."""

    reason = Reason.STALE_ATTEMPT


class AttemptNotHeld(FailedPrecondition):
    """A report about the task's current attempt from an agent that does not hold it (another
    agent's stream): refused, and it changes nothing."""

    reason = Reason.ATTEMPT_NOT_HELD


class UnresolvedInput(FailedPrecondition):
    """A task's input names an output its upstream task did not produce (see Job.inputs_of).

    `error` is how the task fails for it: not retryable, since the upstream's outputs are final.
    """

    reason = Reason.UNRESOLVED_INPUT

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message, reason=Reason.UNRESOLVED_INPUT, field=field)
        self.error = TaskError(
            code=Reason.UNRESOLVED_INPUT.value,
            message=message,
            retryable=False,
            reason=Reason.UNRESOLVED_INPUT,
        )


class _Progress:
    """What promotion and the end-of-job check need, kept up to date by Job._move_task so that
    a transition costs O(its effect), not O(tasks): per-state counts, each task's number of
    dependencies not yet SUCCEEDED, and the PENDING tasks with none left (a heap of insertion
    positions, so they are queued in insertion order as a full scan would; entries that left
    PENDING since are dropped when popped). Built once per aggregate (creation or load).
    """

    __slots__ = ("counts", "dependents", "position", "rank", "ready", "tasks", "unmet")

    def __init__(self, tasks: dict[str, Task], topological_order: tuple[str, ...]) -> None:
        self.tasks = list(tasks.values())
        self.position = {task.id: index for index, task in enumerate(self.tasks)}
        self.rank = {task_id: rank for rank, task_id in enumerate(topological_order)}
        self.dependents: list[list[int]] = [[] for _ in self.tasks]
        self.unmet = [0] * len(self.tasks)
        self.counts: Counter[TaskState] = Counter(task.state for task in self.tasks)
        for index, task in enumerate(self.tasks):
            for dependency in task.todo.depends_on:
                upstream = self.position[dependency]
                self.dependents[upstream].append(index)
                if self.tasks[upstream].state is not TaskState.SUCCEEDED:
                    self.unmet[index] += 1
        self.ready = [
            index
            for index, task in enumerate(self.tasks)
            if task.state is TaskState.PENDING and self.unmet[index] == 0
        ]  # ascending: already a heap

    @property
    def active(self) -> int:
        """Tasks holding a slot of the job's parallelism budget."""
        return sum(self.counts[state] for state in _ACTIVE)

    def moved(self, task: Task, previous: TaskState) -> None:
        """`task` went from `previous` to its current state."""
        target = task.state
        self.counts[previous] -= 1
        self.counts[target] += 1
        index = self.position[task.id]
        if target is TaskState.SUCCEEDED or previous is TaskState.SUCCEEDED:
            step = -1 if target is TaskState.SUCCEEDED else 1
            for dependent in self.dependents[index]:
                self.unmet[dependent] += step
                if self.unmet[dependent] == 0 and self.tasks[dependent].state is TaskState.PENDING:
                    heapq.heappush(self.ready, dependent)
        if target is TaskState.PENDING and self.unmet[index] == 0:
            heapq.heappush(self.ready, index)

    def requeue_ready(self, indices: list[int]) -> None:
        """Put back ready tasks popped but not queued (they wait for their session)."""
        for index in indices:
            heapq.heappush(self.ready, index)

    def pop_ready(self) -> Task | None:
        """The earliest-inserted PENDING task whose dependencies all succeeded, or None."""
        while self.ready:
            index = heapq.heappop(self.ready)
            task = self.tasks[index]
            if task.state is TaskState.PENDING and self.unmet[index] == 0:
                return task
        return None

    def pending_downstream(self, task_id: str) -> list[Task]:
        """The PENDING tasks downstream of `task_id`, in topological order. The walk stops at
        tasks that are not PENDING: what lies behind them was skipped (or cancelled) with them,
        so a second failure before the same fan-in does not walk its downstream again."""
        found: set[int] = set()
        stack = [self.position[task_id]]
        while stack:
            for dependent in self.dependents[stack.pop()]:
                if dependent not in found and self.tasks[dependent].state is TaskState.PENDING:
                    found.add(dependent)
                    stack.append(dependent)
        downstream = [self.tasks[index] for index in found]
        downstream.sort(key=lambda task: self.rank[task.id])
        return downstream


@dataclass(slots=True, kw_only=True)
class Job:
    """The aggregate. Create with `Job.create`; mutate only through its methods."""

    job_id: str
    tenant: str
    source: JobSource
    options: JobOptions
    tasks: dict[str, Task]
    state: JobState = JobState.PENDING
    intent: str = ""
    request_id: str = ""
    request_fingerprint: str = ""
    conversation_id: str = ""
    error: TaskError | None = None
    dead_lettered: bool = False
    cancel_requested: bool = False
    # Why the job is being stopped: CANCELLED_BY_USER ends it CANCELLED,
    # JOB_DEADLINE_EXCEEDED ends it FAILED.
    cancel_reason: Reason | None = None
    # The reason a CancelJob caller gave, in its own words ("" when none, or not cancelled).
    cancel_message: str = ""
    retry_count: int = 0
    last_event_sequence: int = 0
    create_time: datetime
    update_time: datetime
    start_time: datetime | None = None
    end_time: datetime | None = None
    changes: JobChanges = field(default_factory=JobChanges, repr=False, compare=False)
    _graph: TaskGraph | None = field(default=None, repr=False, compare=False)
    _index: _Progress | None = field(default=None, repr=False, compare=False)
    # The tasks of each session (domain/sessions.py builds it on first use).
    _session_index: dict[str, list[Task]] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def create(
        cls,
        *,
        job_id: str,
        tenant: str,
        graph: TaskGraph,
        source: JobSource,
        options: JobOptions,
        now: datetime,
        intent: str = "",
        request_id: str = "",
        request_fingerprint: str = "",
        conversation_id: str = "",
    ) -> Job:
        """A new PENDING job whose ready tasks are QUEUED (within the parallelism bound)."""
        job = cls(
            job_id=job_id,
            tenant=tenant,
            source=source,
            options=options,
            tasks={todo.id: Task(todo=todo) for todo in graph},
            intent=intent,
            request_id=request_id,
            request_fingerprint=request_fingerprint,
            conversation_id=conversation_id,
            create_time=now,
            update_time=now,
            _graph=graph,
        )
        job.changes.dirty_tasks.update(job.tasks)
        job._record(JobStateChanged(from_state=None, to_state=JobState.PENDING), now)
        job._promote_ready(now)
        return job

    # -- queries ------------------------------------------------------------------------

    @property
    def graph(self) -> TaskGraph:
        if self._graph is None:
            self._graph = TaskGraph.from_todos(task.todo for task in self.tasks.values())
        return self._graph

    @property
    def is_terminal(self) -> bool:
        return JOB_STATE_MACHINE.is_terminal(self.state)

    def task(self, task_id: str) -> Task:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise NotFound(
                f"job {self.job_id!r} has no task {task_id!r}",
                reason=Reason.TASK_NOT_FOUND,
                field="task_id",
            ) from None

    @property
    def _progress(self) -> _Progress:
        if self._index is None:
            self._index = _Progress(self.tasks, self.graph.topological_order())
        return self._index

    def retry_policy_of(self, task: Task) -> RetryPolicy:
        return task.todo.retry_policy or self.options.default_retry_policy or DEFAULT_RETRY_POLICY

    def take_changes(self) -> JobChanges:
        """Hand over what the mutations since the last call produced, and start afresh."""
        changes, self.changes = self.changes, JobChanges()
        if changes.sessions_touched:
            changes.sessions_ended += session_rules.ended(self, changes.sessions_touched)
        return changes

    # -- dispatch -------------------------------------------------------------------------

    def assign(
        self,
        task_id: str,
        *,
        attempt: int,
        agent_id: str,
        lease_until: datetime,
        now: datetime,
        timeout_at: datetime | None = None,
    ) -> Task:
        """QUEUED -> RUNNING as attempt `attempt` (which must be the next one) on `agent_id`.

        With `timeout_at`, the lease never reaches past it (renewals are capped the same way),
        so an attempt that overruns its timeout ends by lease expiry even while its agent lives.
        """
        task = self._startable(task_id, attempt)
        if task.next_attempt_time is not None and task.next_attempt_time > now:
            raise StaleAttempt(
                f"task {task_id!r} may not start before {task.next_attempt_time.isoformat()}"
            )
        if task.todo.session and not session_rules.check_affinity(task, agent_id):
            raise StaleAttempt(
                f"task {task_id!r} of session {task.todo.session!r} waits for agent "
                f"{task.agent_id!r}, not {agent_id!r}"
            )
        task.attempt = attempt
        task.agent_id = agent_id
        task.lease_until = lease_until if timeout_at is None else min(lease_until, timeout_at)
        task.timeout_at = timeout_at
        task.next_attempt_time = None
        task.start_time = task.start_time or now
        task.attempts.append(
            Attempt(number=attempt, agent_id=agent_id, state=AttemptState.RUNNING, start_time=now)
        )
        if task_id in self.changes.queued:
            # Queued and started in one change: it never goes through the work queue.
            self.changes.queued.remove(task_id)
        self._move_task(task, TaskState.RUNNING, now, agent_id=agent_id)
        if self.state is JobState.PENDING:
            self.start_time = self.start_time or now
            self._move_job(JobState.RUNNING, now)
        return task

    # -- inputs ---------------------------------------------------------------------------
    #
    # Inputs are resolved when an attempt is assigned, in the transaction that assigns it (the
    # orchestrator calls inputs_of, then assign or fail_unresolved). Not when the upstream task
    # succeeds: the check is then fenced like the assignment itself, sees exactly the outputs
    # the attempt is sent with, and a task whose other dependencies fail is skipped as usual
    # instead of failing for an input it would never have used.

    def inputs_of(self, task_id: str) -> dict[str, Any]:
        """The values of the task's inputs, keyed by input name, from its upstream tasks' outputs.

        Raises UnresolvedInput when an upstream task has not succeeded or did not produce the
        referenced key: the task must not run with an input silently missing.
        """
        todo = self.task(task_id).todo
        values: dict[str, Any] = {}
        for name in sorted(todo.inputs):
            ref = todo.inputs[name]
            if ref.artifact_name:
                continue  # see artifact_inputs_of
            upstream = self.tasks.get(ref.task_id)
            outputs = (
                upstream.outputs
                if upstream is not None and upstream.state is TaskState.SUCCEEDED
                else None
            )
            if outputs is None:
                raise UnresolvedInput(
                    f"task {task_id!r}: input {name!r} takes output {ref.output_key!r} of task "
                    f"{ref.task_id!r}, which has not succeeded",
                    field=f"inputs[{name}].task_id",
                )
            if ref.output_key not in outputs:
                produced = ", ".join(repr(key) for key in sorted(outputs)[:20]) or "none"
                more = ", ..." if len(outputs) > 20 else ""
                raise UnresolvedInput(
                    f"task {task_id!r}: input {name!r} takes output {ref.output_key!r} of task "
                    f"{ref.task_id!r}, which did not produce it (its outputs: {produced}{more})",
                    field=f"inputs[{name}].output_key",
                )
            values[name] = outputs[ref.output_key]
        return values

    def artifact_inputs_of(self, task_id: str) -> dict[str, ArtifactRecord]:
        """The artifacts the task's artifact_name inputs take, keyed by input name: the one of
        that name stored by the upstream task's succeeded attempt. UnresolvedInput as inputs_of
        when it has not succeeded, or its succeeded attempt stored no artifact of that name
        (one of a failed attempt does not count: it came from a run that did not succeed)."""
        todo = self.task(task_id).todo
        found: dict[str, ArtifactRecord] = {}
        for name in sorted(todo.inputs):
            ref = todo.inputs[name]
            if not ref.artifact_name:
                continue
            upstream = self.tasks.get(ref.task_id)
            if upstream is None or upstream.state is not TaskState.SUCCEEDED:
                raise UnresolvedInput(
                    f"task {task_id!r}: input {name!r} takes artifact {ref.artifact_name!r} of "
                    f"task {ref.task_id!r}, which has not succeeded",
                    field=f"inputs[{name}].task_id",
                )
            stored = upstream.attempts[-1].artifacts if upstream.attempts else []
            match = next((a for a in stored if a.name == ref.artifact_name), None)
            if match is None:
                names = ", ".join(repr(a.name) for a in stored[:20]) or "none"
                more = ", ..." if len(stored) > 20 else ""
                raise UnresolvedInput(
                    f"task {task_id!r}: input {name!r} takes artifact {ref.artifact_name!r} of "
                    f"task {ref.task_id!r}, which did not store it (its artifacts: {names}{more})",
                    field=f"inputs[{name}].artifact_name",
                )
            found[name] = match
        return found

    def store_artifact(self, artifact: ArtifactRecord, *, agent_id: str, now: datetime) -> None:
        """Record an artifact the attempt `artifact.attempt` of `artifact.task_id` uploaded;
        fenced as a report (StaleAttempt, AttemptNotHeld). A name the attempt stored before is
        replaced in place; a task holding MAX_ARTIFACTS_PER_TASK refuses more."""
        self.check_held(artifact.task_id, attempt=artifact.attempt, agent_id=agent_id)
        task = self.tasks[artifact.task_id]
        current = task.attempts[-1].artifacts
        for index, stored in enumerate(current):
            if stored.name == artifact.name:
                current[index] = artifact
                break
        else:
            if sum(len(attempt.artifacts) for attempt in task.attempts) >= MAX_ARTIFACTS_PER_TASK:
                raise DomainError(
                    f"task {task.id!r} already lists {MAX_ARTIFACTS_PER_TASK} artifacts, as many "
                    "as the server keeps for one task",
                    reason=Reason.TOO_MANY_ARTIFACTS,
                    field="header.name",
                )
            current.append(artifact)
        self.changes.dirty_tasks.add(task.id)
        self.update_time = now
        self._record(TaskArtifactStored(artifact=artifact), now)

    def fail_unresolved(
        self, task_id: str, *, attempt: int, unresolved: UnresolvedInput, now: datetime
    ) -> None:
        """The QUEUED task cannot start as attempt `attempt`: an input is unresolved. It fails
        for good without an attempt (nothing ran), and its dependents are skipped.

        Fenced as assign is: StaleAttempt unless the task waits QUEUED for that attempt.
        """
        task = self._startable(task_id, attempt)
        self._fail_task(task, unresolved.error, now)

    def progress(
        self, task_id: str, *, attempt: int, percent: float | None, message: str, now: datetime
    ) -> None:
        self._running(task_id, attempt)
        self._record(
            TaskProgress(task_id=task_id, attempt=attempt, percent=percent, message=message), now
        )

    # -- outcomes -------------------------------------------------------------------------

    def succeed(
        self, task_id: str, *, attempt: int, outputs: Mapping[str, Any], now: datetime
    ) -> None:
        task = self._running(task_id, attempt)
        self._end_attempt(task, AttemptState.SUCCEEDED, now)
        task.outputs = dict(outputs)
        task.error = None
        self._move_task(task, TaskState.SUCCEEDED, now, outputs=task.outputs)
        self._settle(now)

    def fail(
        self,
        task_id: str,
        *,
        attempt: int,
        error: TaskError,
        now: datetime,
        rng: random.Random | None = None,
    ) -> None:
        """The attempt failed: retry after backoff if the policy allows, else fail the task.

        An attempt stopped by the job deadline (see _stopped_by_deadline) is no failure of its
        own: the deadline is applied (the job stops and ends FAILED with JOB_DEADLINE_EXCEEDED)
        and the attempt ends CANCELLED with that error, whatever its agent called it.
        """
        task = self._running(task_id, attempt)
        if (deadline := self._stopped_by_deadline(task, error)) is not None:
            stop = _deadline_error(deadline)
            self._end_attempt(task, AttemptState.CANCELLED, now, stop)
            self._move_task(task, TaskState.CANCELLED, now, error=stop)
            if self.cancel_requested:
                self._settle(now)
            else:
                self._stop(stop, now)
            return
        timed_out = error.reason is Reason.TASK_TIMEOUT
        self._end_attempt(
            task, AttemptState.TIMED_OUT if timed_out else AttemptState.FAILED, now, error
        )
        if self.cancel_requested:
            self._move_task(task, TaskState.CANCELLED, now, error=error)
            self._settle(now)
            return
        task.failures += 1
        policy = self.retry_policy_of(task)
        if policy.should_retry(task.failures, error_code=error.code, retryable=error.retryable):
            delay_s = policy.backoff_s(task.failures, rng=rng)
            self._requeue(
                task, now, next_attempt_time=now + timedelta(seconds=delay_s), error=error
            )
            return
        exhausted = error.retryable and error.code not in policy.non_retryable_codes
        final = (
            TaskError(
                code=error.code,
                message=f"{error.message} (attempt {task.failures} of {policy.max_attempts})",
                retryable=False,
                reason=Reason.RETRIES_EXHAUSTED,
            )
            if exhausted
            else error
        )
        self._fail_task(task, final, now)

    def lose(self, task_id: str, *, attempt: int, max_redeliveries: int, now: datetime) -> None:
        """The attempt's agent went away (lease expired): re-queue within the redelivery bound."""
        task = self._running(task_id, attempt)
        error = TaskError(
            code="LOST",
            message=f"agent {task.agent_id!r} stopped renewing the lease of attempt {attempt}",
            retryable=True,
        )
        self._end_attempt(task, AttemptState.LOST, now, error)
        if self.cancel_requested:
            self._move_task(task, TaskState.CANCELLED, now, error=error)
            self._settle(now)
            return
        if task.todo.session:
            # The session is the unit of recovery: it runs again from its first task.
            # restart() charges the loss (task.losses) and applies the redelivery bound.
            session_rules.restart(
                self,
                task,
                reason=f"agent {task.agent_id!r} stopped renewing the lease of task "
                f"{task_id!r} attempt {attempt}",
                from_agent=task.agent_id,
                max_redeliveries=max_redeliveries,
                now=now,
            )
            return
        task.losses += 1
        if task.losses > max_redeliveries:
            final = TaskError(
                code="LOST",
                message=f"task was lost {task.losses} times (bound: {max_redeliveries} "
                "redeliveries); its agents keep disappearing",
                reason=Reason.REDELIVERY_EXHAUSTED,
            )
            self._fail_task(task, final, now)
            return
        self._requeue(task, now, next_attempt_time=None, error=error, lost=True)

    def release_session(
        self, task_id: str, *, attempt: int, agent_id: str, max_redeliveries: int, now: datetime
    ) -> bool:
        """The QUEUED `task_id` (attempt `attempt` ran last) waits for `agent_id`, which holds its
        session and has been gone for a lease: the session restarts (domain/sessions.py).
        Returns whether it did (False: the task no longer waits for that agent)."""
        task = self.tasks.get(task_id)
        if (
            task is None
            or not task.todo.session
            or task.state is not TaskState.QUEUED
            or task.attempt != attempt
            or task.agent_id != agent_id
            or not agent_id
            or self.cancel_requested
            or self.is_terminal
        ):
            return False
        session_rules.restart(
            self,
            task,
            reason=f"agent {agent_id!r} that holds the session went away while task "
            f"{task_id!r} waited for it",
            from_agent=agent_id,
            max_redeliveries=max_redeliveries,
            now=now,
        )
        return True

    def lease_expired(
        self,
        task_id: str,
        *,
        attempt: int,
        max_redeliveries: int,
        now: datetime,
        rng: random.Random | None = None,
    ) -> None:
        """The attempt's lease ended: past its timeout it timed out (its agent is told to stop,
        the retry policy decides what follows); before, its agent went away (lost)."""
        task = self._running(task_id, attempt)
        if task.timeout_at is None or now < task.timeout_at:
            self.lose(task_id, attempt=attempt, max_redeliveries=max_redeliveries, now=now)
            return
        self.changes.cancels.append((AttemptRef(self.job_id, task.id, attempt), task.agent_id))
        timeout_s = task.todo.timeout_s
        error = TaskError(
            code="TASK_TIMEOUT",
            message=f"attempt {attempt} did not report within its timeout of {timeout_s:g} s; "
            "the server stopped waiting for it",
            retryable=True,
            reason=Reason.TASK_TIMEOUT,
        )
        self.fail(task_id, attempt=attempt, error=error, now=now, rng=rng)

    def miss_start(self, task_id: str, *, now: datetime, why: str) -> bool:
        """No agent took the QUEUED task before its schedule-to-start timeout: it fails (not
        retried: what it lacks is an agent, not another try). `why` names what is missing.
        Returns whether it failed (False: it started, or its time has not come)."""
        task = self.task(task_id)
        if task.state is not TaskState.QUEUED or task.start_by is None or now < task.start_by:
            return False
        waited_s = task.todo.schedule_to_start_s
        error = TaskError(
            code="SCHEDULE_TO_START_TIMEOUT",
            message=f"no agent started task {task_id!r} within {waited_s:g} s: {why}",
            reason=Reason.SCHEDULE_TO_START_TIMEOUT,
        )
        self._withdraw(task)
        self._fail_task(task, error, now)
        return True

    def hand_back(self, task_id: str, *, attempt: int, reason: str, now: datetime) -> None:
        """The agent gave the attempt up (it is shutting down, or stopped it unasked).

        After a cancel this ends the task; otherwise the task goes to another agent at once,
        charged to neither the retry nor the redelivery budget: the task did nothing wrong.
        """
        task = self._running(task_id, attempt)
        if self.cancel_requested:
            # Stopped by the deadline: said so, as when the agent itself names the deadline.
            deadline = self.options.deadline
            stop = (
                _deadline_error(deadline)
                if deadline is not None and self.cancel_reason is Reason.JOB_DEADLINE_EXCEEDED
                else None
            )
            self._end_attempt(task, AttemptState.CANCELLED, now, stop)
            self._move_task(task, TaskState.CANCELLED, now, error=stop)
            self._settle(now)
            return
        error = TaskError(code="HANDED_BACK", message=reason, retryable=True)
        self._end_attempt(task, AttemptState.CANCELLED, now, error)
        self._requeue(task, now, next_attempt_time=None, error=error)

    # -- requests -------------------------------------------------------------------------

    def cancel(self, *, now: datetime, reason: str = "") -> None:
        """Cancel: queued work stops now, running attempts are told to stop; idempotent (a
        second cancel changes nothing, its reason included).

        `reason` is the caller's, recorded in a JobCancelRequested event (before the task
        changes), kept as `cancel_message` and in the cancelled tasks' error message, and sent
        to the agents (see stop_message). Its length is bounded by the caller (the API).
        The job ends CANCELLED once every running attempt has reported or lost its lease.
        """
        if self.cancel_requested or self.state is JobState.CANCELLED:
            return
        JOB_STATE_MACHINE.transition(self.state, JobState.CANCELLED)
        self.cancel_message = reason
        self._record(JobCancelRequested(reason=reason), now)
        error = TaskError(
            code="CANCELLED",
            message=f"job cancelled: {reason}" if reason else "job cancelled",
            reason=Reason.CANCELLED_BY_USER,
        )
        self._stop(error, now)

    def stop_message(self) -> str:
        """Why this job's running attempts are told to stop (CancelAttempt.reason): the cancel's
        own reason, else what stopped them."""
        if self.cancel_reason is Reason.CANCELLED_BY_USER:
            return self.cancel_message or "job cancelled"
        if self.cancel_reason is Reason.JOB_DEADLINE_EXCEEDED:
            return "the job deadline passed"
        return "the attempt ran past its timeout"

    def expire(self, *, now: datetime) -> bool:
        """The deadline passed: stop what runs and fail the job with JOB_DEADLINE_EXCEEDED.

        Returns whether anything changed (not yet due, already ending or ended: nothing).
        """
        deadline = self.options.deadline
        if deadline is None or now < deadline or self.is_terminal or self.cancel_requested:
            return False
        self._stop(_deadline_error(deadline), now)
        return True

    def _stopped_by_deadline(self, task: Task, error: TaskError) -> datetime | None:
        """The job deadline, when it is what ended the task's running attempt with `error`.

        An agent stops an attempt at the earlier of its task timeout and the job deadline; an
        older agent reports TASK_TIMEOUT for both. So a timeout error is the deadline's when the
        task has no timeout, or when the deadline came before the timeout would have (counted
        from the attempt's start); an agent that says JOB_DEADLINE_EXCEEDED is believed when the
        job has a deadline. The server's own timeout (lease_expired) is attributed the same way.
        """
        deadline = self.options.deadline
        if deadline is None:
            return None
        if error.reason is Reason.JOB_DEADLINE_EXCEEDED:
            return deadline
        if error.reason is not Reason.TASK_TIMEOUT:
            return None
        timeout_s = task.todo.timeout_s
        if timeout_s is None:
            return deadline
        started = task.attempts[-1].start_time
        return deadline if deadline < started + timedelta(seconds=timeout_s) else None

    def _stop(self, error: TaskError, now: datetime) -> None:
        """Cancel queued work now and ask agents to stop running attempts."""
        self.cancel_requested = True
        self.cancel_reason = error.reason
        for task in self.tasks.values():
            if task.state in (TaskState.PENDING, TaskState.QUEUED, TaskState.WAITING_APPROVAL):
                if task.state is TaskState.QUEUED:
                    self._withdraw(task)
                self._move_task(task, TaskState.CANCELLED, now, error=error)
            elif task.state is TaskState.RUNNING:
                self.changes.cancels.append(
                    (AttemptRef(self.job_id, task.id, task.attempt), task.agent_id)
                )
        self.update_time = now
        self._settle(now)

    def retry(self, *, now: datetime) -> None:
        """Re-drive a FAILED or CANCELLED job: what did not succeed runs again, outputs stay."""
        JOB_STATE_MACHINE.transition(self.state, JobState.PENDING)
        for task in self.tasks.values():
            if task.state is TaskState.SUCCEEDED:
                continue
            task.failures = task.losses = 0
            task.error = None
            task.next_attempt_time = None
            task.end_time = None
            self._move_task(task, TaskState.PENDING, now)
        self.retry_count += 1
        self.cancel_requested = False
        self.cancel_reason = None
        self.cancel_message = ""
        self.dead_lettered = False
        self.error = None
        self.end_time = None
        self._move_job(JobState.PENDING, now)
        self._promote_ready(now)

    # -- internals ------------------------------------------------------------------------

    def _startable(self, task_id: str, attempt: int) -> Task:
        """The task, if it waits QUEUED for attempt `attempt` in a live job (the fence of every
        start), else StaleAttempt."""
        task = self.task(task_id)
        if (
            task.state is not TaskState.QUEUED
            or task.attempt != attempt - 1
            or self.cancel_requested
            or self.is_terminal
        ):
            raise StaleAttempt(
                f"task {task_id!r} attempt {attempt} cannot start: task is {task.state.value} "
                f"at attempt {task.attempt}"
            )
        return task

    def check_held(self, task_id: str, *, attempt: int, agent_id: str) -> None:
        """The fence of every report (result, progress, decline): the task must run `attempt`
        (else StaleAttempt) on `agent_id` (else AttemptNotHeld). Checked in the reporting
        transaction, so an attempt adopted meanwhile by the agent's new session stays its own."""
        task = self._running(task_id, attempt)
        if task.agent_id != agent_id:
            raise AttemptNotHeld(
                f"task {task_id!r} attempt {attempt} is held by another agent, not {agent_id!r}"
            )

    def _running(self, task_id: str, attempt: int) -> Task:
        task = self.task(task_id)
        if task.state is not TaskState.RUNNING or task.attempt != attempt:
            raise StaleAttempt(
                f"task {task_id!r} attempt {attempt} is not running "
                f"(task is {task.state.value} at attempt {task.attempt})"
            )
        return task

    def _end_attempt(
        self, task: Task, state: AttemptState, now: datetime, error: TaskError | None = None
    ) -> None:
        current = task.attempts[-1]
        current.state = ATTEMPT_STATE_MACHINE.transition(current.state, state)
        current.end_time = now
        current.error = error
        task.lease_until = None
        task.timeout_at = None

    def _cancel_attempt(self, task: Task) -> None:
        """Tell the agent of the task's current attempt to stop (after commit)."""
        self.changes.cancels.append((AttemptRef(self.job_id, task.id, task.attempt), task.agent_id))

    def _withdraw(self, task: Task) -> None:
        """The QUEUED task leaves the queue untaken: its entry is withdrawn after commit, or,
        queued in this same change, never published at all."""
        if task.id in self.changes.queued:
            self.changes.queued.remove(task.id)
        else:
            self.changes.withdrawn.append(task.id)
            if task.todo.session and task.agent_id:
                self.changes.withdrawn_pins[task.id] = task.agent_id

    def _requeue(
        self,
        task: Task,
        now: datetime,
        *,
        next_attempt_time: datetime | None,
        error: TaskError,
        lost: bool = False,
    ) -> None:
        task.next_attempt_time = next_attempt_time
        self._move_task(task, TaskState.QUEUED, now, error=error)
        self._record(
            TaskRetryScheduled(
                task_id=task.id,
                failed_attempt=task.attempt,
                next_attempt_time=next_attempt_time or now,
                error=error,
                lost=lost,
            ),
            now,
        )
        self.changes.queued.append(task.id)

    def _fail_task(self, task: Task, error: TaskError, now: datetime) -> None:
        task.error = error
        self._move_task(task, TaskState.FAILED, now, error=error)
        skipped = TaskError(
            code="UPSTREAM_FAILED",
            message=f"not run: task {task.id!r} failed",
            reason=Reason.UPSTREAM_FAILED,
        )
        for downstream in self._progress.pending_downstream(task.id):
            downstream.error = skipped
            self._move_task(downstream, TaskState.SKIPPED, now, error=skipped)
        self._settle(now)

    def _promote_ready(self, now: datetime) -> None:
        """Queue PENDING tasks whose dependencies all succeeded, within the parallelism bound.

        O(tasks promoted): the ready ones come from the progress index, not a scan."""
        if self.cancel_requested or self.is_terminal:
            return
        progress = self._progress
        budget = self.options.max_parallelism - progress.active
        waiting: list[int] = []  # ready, but another task of their session is active
        while budget > 0:
            task = progress.pop_ready()
            if task is None:
                break
            if task.todo.session and session_rules.busy(self, task):
                waiting.append(progress.position[task.id])
                continue
            if task.todo.requires_approval:
                self._move_task(task, TaskState.WAITING_APPROVAL, now)
                continue
            self._move_task(task, TaskState.QUEUED, now)
            self.changes.queued.append(task.id)
            budget -= 1
        if waiting:
            progress.requeue_ready(waiting)

    def _settle(self, now: datetime) -> None:
        """After a task ended: queue what became ready, and end the job when nothing can run."""
        self._promote_ready(now)
        counts = self._progress.counts
        if self._progress.active:
            return
        # Before the PENDING check: tasks behind an approval stay PENDING until it is given.
        if counts[TaskState.WAITING_APPROVAL]:
            if self.state is not JobState.WAITING_APPROVAL:
                self._move_job(JobState.WAITING_APPROVAL, now)
            return
        if counts[TaskState.PENDING] and not self.cancel_requested:
            return  # cannot happen with a valid graph; kept so a job is never ended early
        if self.cancel_requested and self.cancel_reason is Reason.JOB_DEADLINE_EXCEEDED:
            assert self.options.deadline is not None  # only expire() sets this reason
            self._end_job(JobState.FAILED, now, error=_deadline_error(self.options.deadline))
        elif self.cancel_requested:
            self._end_job(JobState.CANCELLED, now, error=None)
        elif counts[TaskState.SUCCEEDED] == len(self.tasks):
            self._end_job(JobState.SUCCEEDED, now, error=None)
        else:
            # Once per job: the scan is the job's end, not a transition's.
            first_failure = next(
                task.error for task in self.tasks.values() if task.state is TaskState.FAILED
            )
            self.dead_lettered = True
            self._end_job(JobState.FAILED, now, error=first_failure)

    def _end_job(self, state: JobState, now: datetime, *, error: TaskError | None) -> None:
        self.error = error
        self.end_time = now
        self._move_job(state, now, error=error, terminal=True)

    def _move_job(
        self,
        target: JobState,
        now: datetime,
        *,
        error: TaskError | None = None,
        terminal: bool = False,
    ) -> None:
        previous = self.state
        self.state = JOB_STATE_MACHINE.transition(previous, target)
        self.update_time = now
        self._record(
            JobStateChanged(from_state=previous, to_state=target, error=error),
            now,
            terminal=terminal,
        )

    def _move_task(
        self,
        task: Task,
        target: TaskState,
        now: datetime,
        *,
        agent_id: str = "",
        error: TaskError | None = None,
        outputs: Mapping[str, Any] | None = None,
    ) -> None:
        progress = self._progress  # built (if need be) from the states before this move
        previous = task.state
        task.state = TASK_STATE_MACHINE.transition(previous, target)
        task.start_by = None
        if target is TaskState.QUEUED:
            task.queue_time = now
            if task.todo.schedule_to_start_s is not None:
                # From when it may start: a retry's backoff is not time spent waiting for an agent.
                ready_time = task.next_attempt_time or now
                task.start_by = ready_time + timedelta(seconds=task.todo.schedule_to_start_s)
        if TASK_STATE_MACHINE.is_terminal(target):
            task.end_time = now
        progress.moved(task, previous)
        if task.todo.session:
            self.changes.sessions_touched.add(task.todo.session)
            if target is TaskState.QUEUED:
                session_rules.pin(self, task)
        self.changes.dirty_tasks.add(task.id)
        self.update_time = now
        self._record(
            TaskStateChanged(
                task_id=task.id,
                from_state=previous,
                to_state=target,
                attempt=task.attempt,
                agent_id=agent_id,
                error=error,
                outputs=outputs,
            ),
            now,
        )

    def _record(self, payload: EventPayload, now: datetime, *, terminal: bool = False) -> None:
        self.last_event_sequence += 1
        self.changes.events.append(
            JobEvent(
                job_id=self.job_id,
                sequence=self.last_event_sequence,
                create_time=now,
                payload=payload,
                terminal=terminal,
                tenant=self.tenant,
            )
        )


def _deadline_error(deadline: datetime) -> TaskError:
    return TaskError(
        code="DEADLINE_EXCEEDED",
        message=f"the job deadline {deadline.isoformat()} passed",
        reason=Reason.JOB_DEADLINE_EXCEEDED,
    )
