"""The callback outbox: one row per message for a job's callback URL, written in the
transaction of the job change that caused it, then claimed and delivered by any replica
(docs/CALLBACKS.md).

A claim sets `claimed_until` (and the claimer's `claim_token`) under `FOR UPDATE SKIP LOCKED`,
so two replicas never send the same delivery at once, and one killed mid-delivery leaves the
row to another after the claim ends.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE callback_deliveries (
            tenant text COLLATE "C" NOT NULL,
            delivery_id text COLLATE "C" NOT NULL PRIMARY KEY,
            message_id text COLLATE "C" NOT NULL,
            job_id text COLLATE "C" NOT NULL REFERENCES jobs (job_id),
            sequence bigint NOT NULL,
            event_type text NOT NULL,
            url text NOT NULL,
            body_json text NOT NULL,
            state text NOT NULL,
            attempts integer NOT NULL,
            next_attempt_time timestamptz NOT NULL,
            claimed_until timestamptz,
            claim_token text NOT NULL,
            last_error text NOT NULL,
            create_time timestamptz NOT NULL,
            update_time timestamptz NOT NULL
        )
        """
    )
    # The deliverer's claim: due rows only, and the earlier pending messages of their job.
    op.execute(
        "CREATE INDEX callbacks_due ON callback_deliveries (next_attempt_time) "
        "WHERE state = 'PENDING'"
    )
    op.execute(
        "CREATE INDEX callbacks_of_job ON callback_deliveries (job_id, sequence) "
        "WHERE state = 'PENDING'"
    )
    # ListCallbacks: a tenant's rows, oldest first.
    op.execute(
        "CREATE INDEX callbacks_listing ON callback_deliveries (tenant, create_time, delivery_id)"
    )


def downgrade() -> None:
    op.execute("DROP TABLE callback_deliveries")
