"""The audit trail's rows as both SQL stores write and read them: columns, one dict per row.

Roles and artifact ids are stored as text (comma-separated; a JSON array) so one row stays one
insert. Times are datetimes here; each store converts them for its columns (SQLite:
microseconds).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from cpa_scheduler.domain import AuditEntry

AUDIT_COLUMNS: Final = (
    "entry_id",
    "tenant",
    "create_time",
    "subject",
    "roles",
    "credential_kind",
    "credential_id",
    "home_tenant",
    "peer",
    "action",
    "job_id",
    "task_id",
    "attempt",
    "task_action",
    "agent_id",
    "reason",
    "policy_decision",
    "result_code",
    "result_reason",
    "result_message",
    "result_field",
    "artifact_ids",
    "request_id",
    "trace_id",
    "suppressed",
)
AUDIT_TIME_COLUMNS: Final = ("create_time",)


def audit_to_record(entry: AuditEntry) -> dict[str, Any]:
    record = {column: getattr(entry, column) for column in AUDIT_COLUMNS}
    record["roles"] = ",".join(entry.roles)
    record["artifact_ids"] = json.dumps(list(entry.artifact_ids))
    return record


def audit_from_record(record: Mapping[str, Any]) -> AuditEntry:
    values = dict(record)
    values["roles"] = tuple(r for r in values["roles"].split(",") if r)
    values["artifact_ids"] = tuple(json.loads(values["artifact_ids"]))
    return AuditEntry(**values)
