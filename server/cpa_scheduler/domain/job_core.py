"""The job aggregate's state and the internals that move it: fences, task and job
transitions (with their events), promotion of ready tasks, and the end of the job.

Job (job.py) adds the commands on top; every state change still goes through the methods here.
domain/sessions.py uses these internals too (a session restart moves several tasks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from . import sessions as session_rules
from .errors import NotFound, Reason
from .events import (
    EventPayload,
    JobEvent,
    JobStateChanged,
    TaskError,
    TaskRetryScheduled,
    TaskStateChanged,
)
from .job_progress import ProgressIndex
from .job_types import (
    AttemptNotHeld,
    AttemptRef,
    JobChanges,
    JobOptions,
    JobSource,
    StaleAttempt,
    Task,
)
from .retry import DEFAULT_RETRY_POLICY, RetryPolicy
from .states import (
    ATTEMPT_STATE_MACHINE,
    JOB_STATE_MACHINE,
    TASK_STATE_MACHINE,
    AttemptState,
    JobState,
    TaskState,
)
from .task_graph import TaskGraph


@dataclass(slots=True, kw_only=True)
class JobCore:
    """A job's state. Not made directly: `Job.create`, or storage's loading of a Job."""

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
    _index: ProgressIndex | None = field(default=None, repr=False, compare=False)
    # The tasks of each session (domain/sessions.py builds it on first use).
    _session_index: dict[str, list[Task]] | None = field(default=None, repr=False, compare=False)

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
    def _progress(self) -> ProgressIndex:
        if self._index is None:
            self._index = ProgressIndex(self.tasks, self.graph.topological_order())
        return self._index

    def retry_policy_of(self, task: Task) -> RetryPolicy:
        return task.todo.retry_policy or self.options.default_retry_policy or DEFAULT_RETRY_POLICY

    def take_changes(self) -> JobChanges:
        """Hand over what the mutations since the last call produced, and start afresh."""
        changes, self.changes = self.changes, JobChanges()
        if changes.sessions_touched:
            changes.sessions_ended += session_rules.ended(self, changes.sessions_touched)
        return changes

    # -- stopping (cancel, deadline) -----------------------------------------------------

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
            self._end_job(JobState.FAILED, now, error=deadline_error(self.options.deadline))
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


def deadline_error(deadline: datetime) -> TaskError:
    return TaskError(
        code="DEADLINE_EXCEEDED",
        message=f"the job deadline {deadline.isoformat()} passed",
        reason=Reason.JOB_DEADLINE_EXCEEDED,
    )
