"""The bound on every id a caller names (job, task, artifact, delivery, agent and request ids,
idempotency keys): one rule for the whole API, checked before any lookup or storage.

The server's own ids are 32 hex digits; 128 characters without control characters leave room
for ids callers choose (request ids, agent ids) while an id stays an id, never data: a 4 MiB
"id" would otherwise be stored, logged and echoed in every event that names it.
"""

from __future__ import annotations

from cpa_scheduler.domain import CONTROL_CHARACTERS, InvalidArgument, Reason, echo

MAX_ID_CHARS = 128


def bounded_id(value: str, field: str) -> str:
    """`value` (empty allowed); INVALID_FIELD naming `field` when longer than MAX_ID_CHARS or
    holding a control character (PostgreSQL's text cannot even hold NUL)."""
    if len(value) > MAX_ID_CHARS:
        raise InvalidArgument(
            f"{field} {echo(value)} is longer than {MAX_ID_CHARS} characters",
            reason=Reason.INVALID_FIELD,
            field=field,
        )
    if CONTROL_CHARACTERS.search(value):
        raise InvalidArgument(
            f"{field} {echo(value)} holds a control character",
            reason=Reason.INVALID_FIELD,
            field=field,
        )
    return value


def required_id(value: str, field: str) -> str:
    """`value`; MISSING_FIELD when empty, INVALID_FIELD when longer than MAX_ID_CHARS."""
    if not value:
        raise InvalidArgument(f"{field} is required", reason=Reason.MISSING_FIELD, field=field)
    return bounded_id(value, field)
