"""The LAM messages a job's callback URL receives, made from the job's events in the change that
caused them (docs/CALLBACKS.md, "What is sent when"): `inform` when the job changes state,
`done` or `failure` when it ends. The callbacks component's one module that converts between
domain and protobuf types.

Ids derive from the job id and the event's sequence, so a change that is applied again (a
store retrying a batch) makes the same messages, and the outbox keeps one row of each.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Final

from google.protobuf import json_format
from google.rpc import status_pb2

from cpa.lam.v1 import lam_message_pb2 as lam
from cpa_scheduler.api.convert import task_error_to_proto
from cpa_scheduler.api.errors import status_for
from cpa_scheduler.api.lam import SCHEDULER_SENDER
from cpa_scheduler.api.proto_values import dict_to_struct
from cpa_scheduler.domain import (
    DomainError,
    Job,
    JobEvent,
    JobState,
    JobStateChanged,
    OutboundCallback,
    Reason,
    TaskError,
    TaskState,
)

# Namespaces of the derived ids (uuid5): fixed for ever, or ids of stored rows would change.
_MESSAGE_IDS: Final = uuid.UUID("6f1f2c3e-4f7a-5b0e-9c41-8a2d5e7b9c10")
_DELIVERY_IDS: Final = uuid.UUID("0b9e4d2a-1c3f-5e6a-8b7d-9f0a1b2c3d4e")

INFORM: Final = "inform"
DONE: Final = "done"
FAILURE: Final = "failure"


def callback_messages(job: Job, events: Sequence[JobEvent]) -> list[OutboundCallback]:
    """The messages `events` (one change of `job`, which has a callback_url) make: one per job
    state change after the creation. Bounded by the job's state changes, never per task."""
    made = []
    for event in events:
        payload = event.payload
        if not isinstance(payload, JobStateChanged) or payload.from_state is None:
            continue
        key = f"{job.job_id}/{event.sequence}"
        message_id = uuid.uuid5(_MESSAGE_IDS, key).hex
        message = _envelope(job, message_id, event)
        event_type = _body(message, job, payload)
        made.append(
            OutboundCallback(
                delivery_id=uuid.uuid5(_DELIVERY_IDS, key).hex,
                message_id=message_id,
                event_type=event_type,
                sequence=event.sequence,
                url=job.options.callback_url,
                body_json=json_format.MessageToJson(message, indent=None),
                create_time=event.create_time,
            )
        )
    return made


def _envelope(job: Job, message_id: str, event: JobEvent) -> lam.LamMessage:
    """Correlation: a LAM-made job's conversation and request (reply_with, else id); a
    ScheduleJob job's conversation is its job id and it answers its request_id (if any)."""
    options = job.options
    message = lam.LamMessage(
        id=message_id,
        sender=SCHEDULER_SENDER,
        receivers=[options.callback_receiver] if options.callback_receiver else [],
        correlation=lam.Correlation(
            conversation_id=job.conversation_id or job.job_id,
            in_reply_to=options.callback_in_reply_to or job.request_id,
        ),
    )
    message.ts.FromDatetime(event.create_time)
    return message


def _body(message: lam.LamMessage, job: Job, change: JobStateChanged) -> str:
    tasks = job.tasks.values()
    succeeded = sum(task.state is TaskState.SUCCEEDED for task in tasks)
    if change.to_state is JobState.SUCCEEDED:
        message.performative = lam.PERFORMATIVE_DONE
        message.status.CopyFrom(status_pb2.Status(message=f"All {len(tasks)} tasks succeeded."))
        message.done.job_id = job.job_id
        outputs = {task.id: task.outputs for task in tasks if task.outputs is not None}
        message.done.outputs.CopyFrom(dict_to_struct(outputs))
        message.done.artifact_ids.extend(
            artifact.artifact_id for task in tasks for artifact in task.artifacts
        )
        return DONE
    if change.to_state is JobState.FAILED:
        error = change.error or job.error or TaskError(code="FAILED", message="the job failed")
        failed = next((task.id for task in tasks if task.state is TaskState.FAILED), "")
        message.performative = lam.PERFORMATIVE_FAILURE
        _, status = status_for(
            DomainError(error.message, reason=error.reason or Reason.EXECUTOR_ERROR)
        )
        message.status.CopyFrom(status)
        message.failure.job_id = job.job_id
        message.failure.error.CopyFrom(task_error_to_proto(error))
        message.failure.task_id = failed
        return FAILURE
    message.performative = lam.PERFORMATIVE_INFORM
    message.inform.job_id = job.job_id
    message.inform.job_state = change.to_state.value
    if tasks:
        message.inform.percent = 100.0 * succeeded / len(tasks)
    message.inform.message = (
        f"job is {change.to_state.value}: {succeeded} of {len(tasks)} tasks succeeded"
    )
    return INFORM
