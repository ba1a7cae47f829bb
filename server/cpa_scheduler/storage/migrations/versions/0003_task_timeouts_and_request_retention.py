"""Server-enforced timeouts and idempotency retention: when a QUEUED task must have started
(schedule-to-start), when the server stops waiting for a running attempt (task timeout), and an
index to find the request ids whose retention ended.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE tasks ADD COLUMN start_by timestamptz, ADD COLUMN timeout_at timestamptz"
    )
    op.execute("CREATE INDEX tasks_start_by ON tasks (start_by) WHERE start_by IS NOT NULL")
    op.execute("CREATE INDEX jobs_request_age ON jobs (create_time) WHERE request_id <> ''")


def downgrade() -> None:
    op.execute("DROP INDEX jobs_request_age")
    op.execute("DROP INDEX tasks_start_by")
    op.execute("ALTER TABLE tasks DROP COLUMN timeout_at, DROP COLUMN start_by")
