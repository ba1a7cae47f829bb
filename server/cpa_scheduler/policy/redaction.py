"""Redaction: PII a tenant's policy does not allow in a field is hidden in the jobs the API
returns (`[REDACTED:IBAN]`); the stored job keeps the value, and the agent receives it.

The store must keep it: the task runs from it, and again after a restart or a RetryJob. What a
caller reads back (ScheduleJob, BatchScheduleJobs, GetJob, ListJobs, CancelJob, RetryJob) shows
the label instead, for every finding whose action is not `allow` (a `refuse` finding can only be
in a job stored before the policy was tightened). Costs nothing for a tenant whose policy
redacts nothing (`Policy.redacts`).
"""

from __future__ import annotations

from typing import Generic, TypeVar

from google.protobuf import struct_pb2

from cpa.common.v1 import todo_pb2
from cpa.scheduler.v1 import job_pb2

from .memo import BoundedMemo
from .model import PiiAction
from .pii import redact, scan
from .rules import HIDING, Policy

# The request's own inputs are judged as its text: intent parameters are what the caller typed.
_REQUEST_FIELD = "request.text"

K = TypeVar("K")
V = TypeVar("V")


class _Remembered(Generic[K, V]):
    """Answers of recent redactions: every answer showing a job redacts it again. Keyed by the
    policy's id and checked against the policy itself (a reloaded policy is another)."""

    __slots__ = ("_entries",)

    def __init__(self, capacity: int) -> None:
        self._entries: BoundedMemo[tuple[int, K], tuple[Policy, V]] = BoundedMemo(capacity)

    def get(self, policy: Policy, key: K) -> tuple[Policy, V] | None:
        """(policy, answer) if remembered for this very policy, else None."""
        known = self._entries.get((id(policy), key))
        return known if known is not None and known[0] is policy else None

    def put(self, policy: Policy, key: K, answer: V) -> None:
        self._entries.remember((id(policy), key), (policy, answer))


# Texts: only short ones are remembered.
_MAX_CHARS = 4096
_hidden_memo: _Remembered[tuple[str, str], str | None] = _Remembered(4096)


def _hidden(policy: Policy, path: str, text: str) -> str | None:
    """`text` with what the policy does not allow at `path` replaced, or None if unchanged."""
    if not text or not policy.pii_acts(path, HIDING):
        return None
    known = _hidden_memo.get(policy, (path, text))
    if known is not None:
        return known[1]
    findings = [
        finding
        for finding in scan(text, policy.pii_detectors)
        if policy.pii_action(path, finding.detector)[0] is not PiiAction.ALLOW
    ]
    hidden = redact(text, findings) if findings else None
    if len(text) <= _MAX_CHARS:
        _hidden_memo.put(policy, (path, text), hidden)
    return hidden


def _struct(policy: Policy, message: struct_pb2.Struct, path: str, *, judged_as: str = "") -> None:
    if judged_as:
        if not policy.pii_acts(judged_as, HIDING):
            return
        stack = [(value, f"{path}.{key}") for key, value in message.fields.items()]
    else:
        # A value where no rule could hide anything is not walked (most params of most jobs).
        stack = [
            (value, where)
            for key, value in message.fields.items()
            if policy.pii_acts_under(where := f"{path}.{key}", HIDING)
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


# ToDos, by their encoding: walking a params Struct costs more than encoding it (one Python
# object per value). The redacted encoding, or None when nothing changed.
_MAX_TODO_BYTES = 4096  # at most 16 MiB held (key and value), 1-2 MiB typically
_todo_memo: _Remembered[bytes, bytes | None] = _Remembered(2048)


def _todo(policy: Policy, todo: todo_pb2.ToDo) -> None:
    encoded = todo.SerializeToString(deterministic=True)
    if len(encoded) > _MAX_TODO_BYTES:
        _walk_todo(policy, todo)
        return
    known = _todo_memo.get(policy, encoded)
    if known is not None:
        if known[1] is not None:
            todo.ParseFromString(known[1])
        return
    _walk_todo(policy, todo)
    redacted = todo.SerializeToString(deterministic=True)
    _todo_memo.put(policy, encoded, None if redacted == encoded else redacted)


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
