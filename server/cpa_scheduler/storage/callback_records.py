"""The callback outbox's rows as both SQL stores write and read them: columns, one dict per row.

Times are datetimes here; each store converts them for its columns (SQLite: microseconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from cpa_scheduler.domain import AuditCall, AuditEntry, OutboundCallback

from .interface import CallbackDelivery, CallbackState

CALLBACK_COLUMNS: Final = (
    "tenant",
    "delivery_id",
    "message_id",
    "job_id",
    "sequence",
    "event_type",
    "url",
    "body_json",
    "state",
    "attempts",
    "next_attempt_time",
    "claimed_until",
    "claim_token",
    "last_error",
    "create_time",
    "update_time",
)
CALLBACK_TIME_COLUMNS: Final = ("next_attempt_time", "claimed_until", "create_time", "update_time")


def callback_to_record(tenant: str, job_id: str, callback: OutboundCallback) -> dict[str, Any]:
    """A new outbox row: PENDING, due at once, never tried."""
    return {
        "tenant": tenant,
        "delivery_id": callback.delivery_id,
        "message_id": callback.message_id,
        "job_id": job_id,
        "sequence": callback.sequence,
        "event_type": callback.event_type,
        "url": callback.url,
        "body_json": callback.body_json,
        "state": CallbackState.PENDING.value,
        "attempts": 0,
        "next_attempt_time": callback.create_time,
        "claimed_until": None,
        "claim_token": "",
        "last_error": "",
        "create_time": callback.create_time,
        "update_time": callback.create_time,
    }


def callback_from_record(record: Mapping[str, Any]) -> CallbackDelivery:
    return CallbackDelivery(
        tenant=record["tenant"],
        delivery_id=record["delivery_id"],
        message_id=record["message_id"],
        job_id=record["job_id"],
        sequence=record["sequence"],
        event_type=record["event_type"],
        url=record["url"],
        body_json=record["body_json"],
        state=CallbackState(record["state"]),
        attempts=record["attempts"],
        next_attempt_time=record["next_attempt_time"],
        last_error=record["last_error"],
        create_time=record["create_time"],
        update_time=record["update_time"],
        claim_token=record["claim_token"],
    )


def redrive_entry(audit: AuditCall, delivery: CallbackDelivery, now: datetime) -> AuditEntry:
    """The audit entry of one re-driven delivery, written in the re-drive's transaction."""
    return audit.entry(
        create_time=now, job_id=delivery.job_id, reason=f"callback {delivery.delivery_id}"
    )
