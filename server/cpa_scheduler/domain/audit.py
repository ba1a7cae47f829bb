"""The audit trail as the domain sees it: who did what, why, with which result (docs/AUDIT.md).

An entry is a plain value. Entries that record a change of a job travel in its JobChanges and
are written by the store in the transaction of that change, so an entry exists exactly when the
change does; refused calls are written apart (AuditLog.refused, bounded). Nothing here knows
how the caller was authenticated: the API layer turns its principal into an AuditActor.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from .errors import clip

# What one entry keeps of free text (a cancel reason, an error message): the audit answers who
# did what, it is not a copy of the request. UTF-8 bytes.
MAX_AUDIT_TEXT_BYTES: Final = 512
# Screenshot refs kept per task outcome: a browser action takes at most 50 steps, two
# screenshots each at most.
MAX_AUDIT_ARTIFACTS: Final = 100

# Result of a call or outcome that succeeded (else a gRPC status code name, or for a task
# outcome the task error's code).
RESULT_OK: Final = "OK"


class AuditAction:
    """The action names that are not RPC names (those are the RPC's own: "CancelJob")."""

    LAM_REQUEST: Final = "SendMessage.request"
    LAM_CANCEL: Final = "SendMessage.cancel"
    TASK_RESULT: Final = "TaskResult"


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditActor:
    """Who acted: the principal of a call, or an agent reporting an outcome."""

    tenant: str
    """The tenant acted for: the entry belongs to it (ListAuditEntries shows it there only)."""
    subject: str
    roles: tuple[str, ...] = ()
    credential_kind: str = ""
    credential_id: str = ""
    home_tenant: str = ""
    """The credential's own tenant when it acted for `tenant` (an operator acting for another
    tenant); empty otherwise."""
    peer: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditCall:
    """One call being served, as its entries name it: who, which action, the correlation ids."""

    actor: AuditActor
    action: str
    request_id: str = ""
    trace_id: str = ""

    def entry(
        self,
        *,
        create_time: datetime,
        job_id: str = "",
        reason: str = "",
        result_code: str = RESULT_OK,
        result_reason: str = "",
        result_message: str = "",
        result_field: str = "",
        suppressed: int = 0,
        action: str = "",
    ) -> AuditEntry:
        """An entry of this call (of `action` when the call does several things)."""
        actor = self.actor
        return AuditEntry(
            entry_id=uuid.uuid4().hex,
            tenant=actor.tenant,
            create_time=create_time,
            subject=actor.subject,
            roles=actor.roles,
            credential_kind=actor.credential_kind,
            credential_id=actor.credential_id,
            home_tenant=actor.home_tenant,
            peer=actor.peer,
            action=action or self.action,
            job_id=job_id,
            reason=clip(reason, MAX_AUDIT_TEXT_BYTES),
            result_code=result_code,
            result_reason=result_reason,
            result_message=clip(result_message, MAX_AUDIT_TEXT_BYTES),
            result_field=clip(result_field, MAX_AUDIT_TEXT_BYTES),
            request_id=clip(self.request_id, MAX_AUDIT_TEXT_BYTES),
            trace_id=self.trace_id,
            suppressed=suppressed,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One row of the audit trail. Never changed once written (append-only)."""

    entry_id: str
    tenant: str
    create_time: datetime
    # who
    subject: str
    roles: tuple[str, ...] = ()
    credential_kind: str = ""
    credential_id: str = ""
    home_tenant: str = ""
    peer: str = ""
    # what
    action: str
    job_id: str = ""
    task_id: str = ""
    attempt: int = 0
    task_action: str = ""
    agent_id: str = ""
    # why
    reason: str = ""
    policy_decision: str = ""
    """Left for the policy engine: the rule that allowed or refused (empty until it exists)."""
    # result
    result_code: str = RESULT_OK
    result_reason: str = ""
    result_message: str = ""
    result_field: str = ""
    # evidence and correlation
    artifact_ids: tuple[str, ...] = field(default_factory=tuple)
    request_id: str = ""
    trace_id: str = ""
    suppressed: int = 0
    """Refusals of the same principal not written one by one before this one (the bound)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditQuery:
    """Which entries of a tenant ListAuditEntries asks for (empty: any)."""

    job_id: str = ""
    subject: str = ""
    action: str = ""
    result_code: str = ""
    start_time: datetime | None = None
    """Inclusive."""
    end_time: datetime | None = None
    """Exclusive."""


@dataclass(frozen=True, slots=True)
class AuditPosition:
    """Where a listing (newest first) has got to: the last entry of the previous page."""

    create_time: datetime
    entry_id: str
