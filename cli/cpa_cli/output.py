"""How `cpa` shows jobs and events: aligned text for people, protobuf JSON for programs.

Every command renders through these functions, so a job or an event looks the same whether it
comes from `cpa submit --watch`, `cpa watch`, `cpa jobs get` or `cpa demo`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from cpa.common.v1 import error_pb2, todo_pb2
from cpa.scheduler.v1 import job_event_pb2, job_pb2

from .common import emit

_MAX_VALUE_CHARS = 72
_TASK_STATE_PREFIX = "TASK_STATE_"
_JOB_STATE_PREFIX = "JOB_STATE_"
_ATTEMPT_STATE_PREFIX = "ATTEMPT_STATE_"


# --- values -----------------------------------------------------------------------------------


def to_json(message: Message, *, compact: bool = False) -> str:
    """Protobuf JSON with the .proto field names; `compact` puts it on one line (NDJSON)."""
    return json_format.MessageToJson(
        message, preserving_proto_field_name=True, indent=None if compact else 2
    )


def job_state(value: job_pb2.JobState.ValueType) -> str:
    return job_pb2.JobState.Name(value).removeprefix(_JOB_STATE_PREFIX)


def task_state(value: job_pb2.TaskState.ValueType) -> str:
    return job_pb2.TaskState.Name(value).removeprefix(_TASK_STATE_PREFIX)


def action_name(todo: todo_pb2.ToDo) -> str:
    """`echo`, `send_mail`: a custom action's name, or the built-in type in lower case."""
    if todo.action == todo_pb2.ACTION_TYPE_CUSTOM:
        return todo.custom_action
    return todo_pb2.ActionType.Name(todo.action).removeprefix("ACTION_TYPE_").lower()


def struct_text(struct: struct_pb2.Struct, *, limit: int = _MAX_VALUE_CHARS) -> str:
    """A Struct as short one-line JSON (`{"waited_s": 0.3}`), cut with "..." beyond `limit`."""
    if not struct.fields:
        return ""
    values = _whole_numbers(json_format.MessageToDict(struct))
    text = json.dumps(values, ensure_ascii=False, separators=(", ", ": "), sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _whole_numbers(value: Any) -> Any:
    """Struct numbers are doubles: show 3.0 as 3, as the caller most likely wrote it."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value


def reason_name(value: error_pb2.ErrorReason.ValueType) -> str:
    """`ILLEGAL_TRANSITION`: the reason as ErrorInfo carries it."""
    return error_pb2.ErrorReason.Name(value).removeprefix("ERROR_REASON_")


def error_text(error: error_pb2.TaskError) -> str:
    """`TIMEOUT: the portal did not answer`; the reason stands in for a missing code."""
    code = error.code or (reason_name(error.reason) if error.reason else "ERROR")
    return f"{code}: {error.message}" if error.message else code


def seconds_between(start: timestamp_pb2.Timestamp, end: timestamp_pb2.Timestamp) -> float:
    return (end.ToNanoseconds() - start.ToNanoseconds()) / 1e9


def timestamp_text(value: timestamp_pb2.Timestamp) -> str:
    """UTC to the second, `2026-01-31 12:00:05Z`; "-" when unset."""
    if not value.seconds and not value.nanos:
        return "-"
    return value.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, indent: str = "") -> list[str]:
    """Columns padded to their widest cell; the last column is not padded."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append((indent + "  ".join([*cells, row[-1]])).rstrip())
    return lines


# --- jobs -------------------------------------------------------------------------------------


def job_source(job: job_pb2.Job) -> str:
    """What the job was made from: its intent, or "todos" / "text" when no intent was routed."""
    if job.intent:
        return job.intent
    source = job.spec.WhichOneof("source")
    return source or "-"


def job_duration(job: job_pb2.Job) -> str:
    if not job.HasField("end_time"):
        return "-"
    start = job.start_time if job.HasField("start_time") else job.create_time
    return f"{seconds_between(start, job.end_time):.2f}s"


def _tasks_done(job: job_pb2.Job) -> str:
    done = sum(1 for task in job.tasks if task.state == job_pb2.TASK_STATE_SUCCEEDED)
    return f"{done}/{len(job.tasks)}"


def _job_notes(job: job_pb2.Job, *, waiting: bool = True) -> str:
    notes = []
    if job.dead_lettered:
        notes.append("dead-lettered")
    if job.cancel_requested and job.state != job_pb2.JOB_STATE_CANCELLED:
        notes.append("cancel requested")
    if job.retry_count:
        notes.append(f"retried {job.retry_count}x")
    if waiting and (note := waiting_note(job)):
        notes.append(note)
    return ", ".join(notes)


def waiting_note(job: job_pb2.Job) -> str:
    """`send waits: no connected agent offers action 'send_mail'` for the first queued task
    with a waiting reason (and how many more wait), or "" when none waits."""
    waiting = [t for t in job.tasks if t.state == job_pb2.TASK_STATE_QUEUED and t.waiting_reason]
    if not waiting:
        return ""
    first = waiting[0]
    more = f" (+{len(waiting) - 1} more waiting)" if len(waiting) > 1 else ""
    return f"{first.todo.id} waits: {first.waiting_reason}{more}"


def job_list(jobs: Sequence[job_pb2.Job]) -> list[str]:
    """One row per job, for `cpa jobs list`."""
    header = ("JOB", "STATE", "SOURCE", "TASKS", "CREATED", "NOTES")
    rows = [
        (
            job.job_id,
            job_state(job.state),
            job_source(job),
            _tasks_done(job),
            timestamp_text(job.create_time),
            _job_notes(job),
        )
        for job in jobs
    ]
    return table(header, rows)


def _attempt_agents(task: job_pb2.Task) -> str:
    agents = dict.fromkeys(attempt.agent_id for attempt in task.attempts if attempt.agent_id)
    return ", ".join(agents) or "-"


def _task_detail(task: job_pb2.Task) -> str:
    if task.HasField("error"):
        return error_text(task.error)
    if task.outputs.fields:
        return struct_text(task.outputs)
    return task.waiting_reason


def render_job(job: job_pb2.Job) -> list[str]:
    """The job as a person reads it: identity, state, then one row per task."""
    lines = [
        f"job       {job.job_id}",
        f"state     {job_state(job.state)}"
        # The task rows below say why a queued task waits.
        + (f"  ({notes})" if (notes := _job_notes(job, waiting=False)) else ""),
        f"source    {job_source(job)}",
    ]
    if job.spec.labels:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(job.spec.labels.items()))
        lines.append(f"labels    {labels}")
    lines.append(f"created   {timestamp_text(job.create_time)}")
    if job.HasField("end_time"):
        lines.append(f"duration  {job_duration(job)}")
    if job.HasField("error"):
        lines.append(f"error     {error_text(job.error)}")
    if job.cancel_reason:
        lines.append(f"cancelled {job.cancel_reason}")
    lines.append(f"tasks     {_tasks_done(job)} succeeded")
    rows = [
        (
            task.todo.id,
            action_name(task.todo),
            task_state(task.state),
            str(task.attempt),
            _attempt_agents(task),
            ", ".join(task.todo.depends_on) or "-",
            _task_detail(task),
        )
        for task in job.tasks
    ]
    header = ("TASK", "ACTION", "STATE", "ATTEMPTS", "AGENT", "AFTER", "OUTPUT / ERROR")
    lines += table(header, rows, indent="  ")
    return lines


def render_outcome(job: job_pb2.Job) -> str:
    """The last line of a watched job: `job ID SUCCEEDED in 0.42s (7/7 tasks)`."""
    line = f"job {job.job_id} {job_state(job.state)}"
    if job.HasField("end_time"):
        line += f" in {job_duration(job)}"
    line += f" ({_tasks_done(job)} tasks succeeded)"
    if job.HasField("error"):
        line += f": {error_text(job.error)}"
    return line


# --- events -----------------------------------------------------------------------------------


def _state_change(from_state: str, to_state: str, *, unspecified: str = "UNSPECIFIED") -> str:
    return to_state if from_state == unspecified else f"{from_state} -> {to_state}"


def event_text(event: job_event_pb2.JobEvent) -> tuple[str, str]:
    """(subject, what happened): the subject is a task id, or "job" for the job itself."""
    kind = event.WhichOneof("kind")
    if kind == "job_state_changed":
        change = event.job_state_changed
        text = _state_change(job_state(change.from_state), job_state(change.to_state))
        if change.HasField("error"):
            text += f"  {error_text(change.error)}"
        return "job", text
    if kind == "task_state_changed":
        task = event.task_state_changed
        text = _state_change(task_state(task.from_state), task_state(task.to_state))
        if task.to_state == job_pb2.TASK_STATE_RUNNING:
            text += f"  attempt {task.attempt}" + (f" on {task.agent_id}" if task.agent_id else "")
        if task.HasField("error"):
            text += f"  {error_text(task.error)}"
        if task.outputs.fields:
            text += f"  {struct_text(task.outputs)}"
        return task.task_id, text
    if kind == "task_progress":
        progress = event.task_progress
        text = f"progress {progress.percent:.0f}%"
        if progress.message:
            text += f"  {progress.message}"
        return progress.task_id, text
    if kind == "task_retry_scheduled":
        retry = event.task_retry_scheduled
        why = "lost (agent gone)" if retry.lost else "failed"
        text = f"attempt {retry.failed_attempt} {why}"
        if retry.HasField("error"):
            text += f": {error_text(retry.error)}"
        if retry.HasField("next_attempt_time"):
            delay = seconds_between(event.create_time, retry.next_attempt_time)
            text += f"; retry in {max(delay, 0.0):.2f}s"
        return retry.task_id, text
    if kind == "job_cancel_requested":
        reason = event.job_cancel_requested.reason
        return "job", "cancel requested" + (f": {reason}" if reason else "")
    if kind == "task_artifact_stored":
        stored = event.task_artifact_stored
        artifact = stored.artifact
        text = (
            f"artifact {artifact.name} ({artifact.media_type}, {size_text(artifact.size_bytes)})"
            f"  attempt {stored.attempt}"
        )
        return stored.task_id, text
    if kind == "session_restarted":
        restart = event.session_restarted
        text = f"session {restart.session} restarts: {', '.join(restart.task_ids)} run again"
        if restart.from_agent:
            text += f" (was on {restart.from_agent})"
        if restart.reason:
            text += f": {restart.reason}"
        return "job", text
    return "job", f"event {kind or 'of an unknown kind'}"


def size_text(size: int) -> str:
    """A byte count as people read it: 512 B, 12.3 KiB, 4.0 MiB."""
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


class EventPrinter:
    """Prints each event of a job as one line: sequence, time since `origin`, subject, change.

    With `as_json` each event is one line of compact protobuf JSON (NDJSON) instead.
    """

    def __init__(
        self,
        *,
        origin: timestamp_pb2.Timestamp | None = None,
        task_ids: Sequence[str] = (),
        as_json: bool = False,
    ) -> None:
        self._origin_ns = origin.ToNanoseconds() if origin is not None else None
        self._subject_width = max((len(task_id) for task_id in task_ids), default=0)
        self._as_json = as_json
        self._header_printed = False

    @property
    def subject_width(self) -> int:
        """The width of the TASK column so far, for lines printed between the events."""
        return max(self._subject_width, len("TASK"))

    def __call__(self, event: job_event_pb2.JobEvent) -> None:
        if self._as_json:
            emit(to_json(event, compact=True))
            return
        if self._origin_ns is None:
            self._origin_ns = event.create_time.ToNanoseconds()
        subject, text = event_text(event)
        self._subject_width = max(self._subject_width, len(subject), len("TASK"))
        if not self._header_printed:
            self._header_printed = True
            emit(f"{'SEQ':>4}  {'TIME':>8}  {'TASK':<{self._subject_width}}  EVENT")
        offset_s = (event.create_time.ToNanoseconds() - self._origin_ns) / 1e9
        emit(f"{event.sequence:>4}  {offset_s:>+7.3f}s  {subject:<{self._subject_width}}  {text}")
