"""Redaction: PII a tenant's policy does not allow in a field is hidden in the jobs the API
returns (`[REDACTED:IBAN]`); the stored job keeps the value, and the agent receives it.

The store must keep it: the task runs from it, and again after a restart or a RetryJob. What a
caller reads back (ScheduleJob, BatchScheduleJobs, GetJob, ListJobs, CancelJob, RetryJob) shows
the label instead, for every finding whose action is not `allow` (a `refuse` finding can only be
in a job stored before the policy was tightened). Costs nothing for a tenant whose policy
redacts nothing (`Policy.redacts`).
"""

from __future__ import annotations

from google.protobuf import struct_pb2

from cpa.common.v1 import todo_pb2
from cpa.scheduler.v1 import job_pb2

from .model import PiiAction
from .pii import redact, scan
from .rules import HIDING, Policy

# The request's own inputs are judged as its text: intent parameters are what the caller typed.
_REQUEST_FIELD = "request.text"


# Answers of _hidden for recent short texts: every answer showing a job redacts it again. Keyed
# by the policy's id and checked against the policy itself (a reloaded policy is another).
_REMEMBERED = 4096
_MAX_CHARS = 4096
_hidden_memo: dict[tuple[int, str, str], tuple[Policy, str | None]] = {}


def _hidden(policy: Policy, path: str, text: str) -> str | None:
    """`text` with what the policy does not allow at `path` replaced, or None if unchanged."""
    if not text or not policy.pii_acts(path, HIDING):
        return None
    key = (id(policy), path, text)
    known = _hidden_memo.get(key)
    if known is not None and known[0] is policy:
        return known[1]
    findings = [
        finding
        for finding in scan(text, policy.pii_detectors)
        if policy.pii_action(path, finding.detector)[0] is not PiiAction.ALLOW
    ]
    hidden = redact(text, findings) if findings else None
    if len(text) <= _MAX_CHARS:
        if len(_hidden_memo) >= _REMEMBERED:
            _hidden_memo.clear()
        _hidden_memo[key] = (policy, hidden)
    return hidden


def _struct(policy: Policy, message: struct_pb2.Struct, path: str, *, judged_as: str = "") -> None:
    stack: list[tuple[struct_pb2.Value, str]] = [
        (value, f"{path}.{key}") for key, value in message.fields.items()
    ]
    while stack:
        value, where = stack.pop()
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            hidden = _hidden(policy, judged_as or where, value.string_value)
            if hidden is not None:
                value.string_value = hidden
        elif kind == "struct_value":
            stack.extend((v, f"{where}.{k}") for k, v in value.struct_value.fields.items())
        elif kind == "list_value":
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(value.list_value.values))


# ToDos redacted lately, by their encoding: every answer showing a job redacts its ToDos again,
# and walking a params Struct costs more than encoding it (one Python object per value). Keyed
# by the policy's id and checked against the policy itself, as _hidden_memo.
_REMEMBERED_TODOS = 2048
_MAX_TODO_BYTES = 4096  # at most 16 MiB held (key and value), 1-2 MiB typically
_todo_memo: dict[tuple[int, bytes], tuple[Policy, bytes | None]] = {}


def _todo(policy: Policy, todo: todo_pb2.ToDo) -> None:
    encoded = todo.SerializeToString(deterministic=True)
    if len(encoded) > _MAX_TODO_BYTES:
        _walk_todo(policy, todo)
        return
    key = (id(policy), encoded)
    known = _todo_memo.get(key)
    if known is not None and known[0] is policy:
        if known[1] is not None:
            todo.ParseFromString(known[1])
        return
    _walk_todo(policy, todo)
    redacted = todo.SerializeToString(deterministic=True)
    if len(_todo_memo) >= _REMEMBERED_TODOS:
        _todo_memo.clear()
    _todo_memo[key] = (policy, None if redacted == encoded else redacted)


def _walk_todo(policy: Policy, todo: todo_pb2.ToDo) -> None:
    for name in ("text", "description"):
        hidden = _hidden(policy, name, getattr(todo, name))
        if hidden is not None:
            setattr(todo, name, hidden)
    if todo.HasField("selector"):
        hidden = _hidden(policy, "selector.value", todo.selector.value)
        if hidden is not None:
            todo.selector.value = hidden
    _struct(policy, todo.params, "params")


def redact_job(policy: Policy, job: job_pb2.Job) -> None:
    """Hide, in place, the PII the policy does not allow in the job's request and ToDos."""
    if not policy.redacts:
        return
    hidden = _hidden(policy, _REQUEST_FIELD, job.spec.text)
    if hidden is not None:
        job.spec.text = hidden
    _struct(policy, job.spec.intent.parameters, "parameters", judged_as=_REQUEST_FIELD)
    for task in job.tasks:
        _todo(policy, task.todo)
