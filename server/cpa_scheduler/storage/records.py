"""Records: one dict per row of the SQL stores' jobs and tasks tables, with the column names
every SQL store uses (SqliteStore, PostgresStore). The JSON columns hold codec.py's data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from cpa_scheduler import json_text
from cpa_scheduler.domain import JOB_STATE_MACHINE, Job, JobEvent, JobState, Reason, Task, TaskState

from .codec import (
    Data,
    attempt_from_data,
    attempt_to_data,
    error_from_data,
    error_to_data,
    options_from_data,
    options_to_data,
    payload_to_data,
    source_from_data,
    source_to_data,
    todo_from_data,
    todo_to_data,
)

_UNFINISHED = ", ".join(f"'{s.value}'" for s in JobState if s not in JOB_STATE_MACHINE.terminal)


def tenant_load_sql(param: str) -> str:
    """Store.tenant_load's query, `param` the placeholder of the tenant (twice). Jobs: a walk
    over the tenant's jobs (no index on state); tasks: over the QUEUED tasks of every tenant
    (an index on state), each joined to its job."""
    return (
        f"SELECT (SELECT count(*) FROM jobs WHERE tenant = {param} AND state IN ({_UNFINISHED})), "
        "(SELECT count(*) FROM tasks t JOIN jobs j ON j.job_id = t.job_id "
        f"WHERE t.state = 'QUEUED' AND j.tenant = {param})"
    )


JOB_COLUMNS = (
    "tenant",
    "job_id",
    "request_id",
    "request_fingerprint",
    "intent",
    "state",
    "source_json",
    "options_json",
    "error_json",
    "dead_lettered",
    "cancel_requested",
    "cancel_reason",
    "cancel_message",
    "retry_count",
    "conversation_id",
    "last_event_sequence",
    "deadline",
    "create_time",
    "update_time",
    "start_time",
    "end_time",
)
TASK_COLUMNS = (
    "job_id",
    "task_id",
    "position",
    "todo_json",
    "state",
    "attempt",
    "attempts_json",
    "outputs_json",
    "error_json",
    "failures",
    "losses",
    "agent_id",
    "lease_until",
    "next_attempt_time",
    "start_by",
    "timeout_at",
    "queue_time",
    "start_time",
    "end_time",
)
# The columns a transition can change (the rest are written once, at creation).
JOB_STATE_COLUMNS = (
    "job_id",
    "state",
    "error_json",
    "dead_lettered",
    "cancel_requested",
    "cancel_reason",
    "cancel_message",
    "retry_count",
    "last_event_sequence",
    "update_time",
    "start_time",
    "end_time",
)
# The tasks columns a transition can change. A task's ToDo and position never change after
# creation: re-encoding and rewriting todo_json (possibly large) each time would be pure cost.
TASK_STATE_COLUMNS = tuple(
    c for c in TASK_COLUMNS if c not in ("job_id", "task_id", "position", "todo_json")
)
JOB_TIME_COLUMNS = ("deadline", "create_time", "update_time", "start_time", "end_time")
TASK_TIME_COLUMNS = (
    "lease_until",
    "next_attempt_time",
    "start_by",
    "timeout_at",
    "queue_time",
    "start_time",
    "end_time",
)


def job_to_record(job: Job) -> Data:
    """The jobs row (without tasks); times stay datetimes, structures become JSON text."""
    return {
        "tenant": job.tenant,
        "job_id": job.job_id,
        "request_id": job.request_id,
        "request_fingerprint": job.request_fingerprint,
        "intent": job.intent,
        "state": job.state.value,
        "source_json": json_text.dumps(source_to_data(job.source)),
        "options_json": json_text.dumps(options_to_data(job.options)),
        "error_json": json_text.dumps(error_to_data(job.error)),
        "dead_lettered": job.dead_lettered,
        "cancel_requested": job.cancel_requested,
        "cancel_reason": _reason_text(job.cancel_reason),
        "cancel_message": job.cancel_message,
        "retry_count": job.retry_count,
        "conversation_id": job.conversation_id,
        "last_event_sequence": job.last_event_sequence,
        "deadline": job.options.deadline,
        "create_time": job.create_time,
        "update_time": job.update_time,
        "start_time": job.start_time,
        "end_time": job.end_time,
    }


def _reason_text(reason: Reason | None) -> str:
    return "" if reason is None else reason.value


def job_state_to_record(job: Job) -> Data:
    """The JOB_STATE_COLUMNS of the jobs row (times stay datetimes)."""
    return {
        "job_id": job.job_id,
        "state": job.state.value,
        "error_json": json_text.dumps(error_to_data(job.error)),
        "dead_lettered": job.dead_lettered,
        "cancel_requested": job.cancel_requested,
        "cancel_reason": _reason_text(job.cancel_reason),
        "cancel_message": job.cancel_message,
        "retry_count": job.retry_count,
        "last_event_sequence": job.last_event_sequence,
        "update_time": job.update_time,
        "start_time": job.start_time,
        "end_time": job.end_time,
    }


def task_to_record(job_id: str, position: int, task: Task) -> Data:
    """The whole tasks row (times stay datetimes)."""
    return {
        "position": position,
        "todo_json": json_text.dumps(todo_to_data(task.todo)),
        **task_state_to_record(job_id, task),
    }


def task_state_to_record(job_id: str, task: Task) -> Data:
    """The row's key and TASK_STATE_COLUMNS: what a transition writes."""
    return {
        "job_id": job_id,
        "task_id": task.id,
        "state": task.state.value,
        "attempt": task.attempt,
        "attempts_json": json_text.dumps([attempt_to_data(a) for a in task.attempts]),
        "outputs_json": json_text.dumps(task.outputs),
        "error_json": json_text.dumps(error_to_data(task.error)),
        "failures": task.failures,
        "losses": task.losses,
        "agent_id": task.agent_id,
        "lease_until": task.lease_until,
        "next_attempt_time": task.next_attempt_time,
        "start_by": task.start_by,
        "timeout_at": task.timeout_at,
        "queue_time": task.queue_time,
        "start_time": task.start_time,
        "end_time": task.end_time,
    }


def task_from_record(record: Mapping[str, Any]) -> Task:
    return Task(
        todo=todo_from_data(json.loads(record["todo_json"])),
        state=TaskState(record["state"]),
        attempt=record["attempt"],
        attempts=[attempt_from_data(a) for a in json.loads(record["attempts_json"])],
        outputs=json.loads(record["outputs_json"]),
        error=error_from_data(json.loads(record["error_json"])),
        failures=record["failures"],
        losses=record["losses"],
        agent_id=record["agent_id"],
        lease_until=record["lease_until"],
        next_attempt_time=record["next_attempt_time"],
        start_by=record["start_by"],
        timeout_at=record["timeout_at"],
        queue_time=record["queue_time"],
        start_time=record["start_time"],
        end_time=record["end_time"],
    )


def job_from_records(record: Mapping[str, Any], tasks: Iterable[Task]) -> Job:
    return Job(
        job_id=record["job_id"],
        tenant=record["tenant"],
        source=source_from_data(json.loads(record["source_json"])),
        options=options_from_data(json.loads(record["options_json"])),
        tasks={task.id: task for task in tasks},
        state=JobState(record["state"]),
        intent=record["intent"],
        request_id=record["request_id"],
        request_fingerprint=record["request_fingerprint"],
        conversation_id=record["conversation_id"],
        error=error_from_data(json.loads(record["error_json"])),
        dead_lettered=bool(record["dead_lettered"]),
        cancel_requested=bool(record["cancel_requested"]),
        cancel_reason=Reason(record["cancel_reason"]) if record["cancel_reason"] else None,
        cancel_message=record["cancel_message"],
        retry_count=record["retry_count"],
        last_event_sequence=record["last_event_sequence"],
        create_time=record["create_time"],
        update_time=record["update_time"],
        start_time=record["start_time"],
        end_time=record["end_time"],
    )


def event_payload_json(event: JobEvent) -> str:
    return json_text.dumps(payload_to_data(event.payload))
