"""The job aggregate: a job, its tasks and attempts, and every rule that moves them.

All state changes of a job go through the methods here, inside one storage transaction each;
they check the transition (fencing stale attempts), record events with the next sequence
numbers and note the effects to carry out after commit (tasks to queue, attempts to cancel).

This module holds the commands (create, assign, inputs, reports and outcomes, cancel,
deadline, retry); the state and the transitions they share are in job_core.py, the values a
job is made of in job_types.py, the progress index in job_progress.py.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from . import sessions as session_rules
from .artifacts import MAX_ARTIFACTS_PER_TASK, ArtifactRecord
from .errors import DomainError, Reason
from .events import (
    JobCancelRequested,
    JobStateChanged,
    TaskArtifactStored,
    TaskError,
    TaskProgress,
)
from .job_core import JobCore, deadline_error
from .job_types import (
    Attempt,
    AttemptRef,
    JobOptions,
    JobSource,
    StaleAttempt,
    Task,
    UnresolvedInput,
)
from .states import JOB_STATE_MACHINE, AttemptState, JobState, TaskState
from .task_graph import TaskGraph


class Job(JobCore):
    """The aggregate. Create with `Job.create`; mutate only through its methods (its state and
    the transitions every command goes through are JobCore's, job_core.py)."""

    __slots__ = ()

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
        self.fail_unstarted(task_id, attempt=attempt, error=unresolved.error, now=now)

    def fail_unstarted(
        self, task_id: str, *, attempt: int, error: TaskError, now: datetime
    ) -> None:
        """The QUEUED task may not start as attempt `attempt` (an unresolved input, a policy
        that refuses it): it fails for good with `error` without an attempt (nothing ran), and
        its dependents are skipped. Fenced as assign is: StaleAttempt unless the task waits
        QUEUED for that attempt."""
        task = self._startable(task_id, attempt)
        self._fail_task(task, error, now)

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
            stop = deadline_error(deadline)
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
                details=error.details,
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
                deadline_error(deadline)
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
        self._stop(deadline_error(deadline), now)
        return True

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
