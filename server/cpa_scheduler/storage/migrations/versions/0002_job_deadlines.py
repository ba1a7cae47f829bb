"""Job deadlines: the deadline as a column (the sweeper finds overdue jobs) and why a job is
being stopped (a user's cancel or its deadline).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE jobs ADD COLUMN cancel_reason text NOT NULL DEFAULT ''")
    op.execute("ALTER TABLE jobs ADD COLUMN deadline timestamptz")
    op.execute("CREATE INDEX jobs_deadline ON jobs (deadline) WHERE deadline IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP INDEX jobs_deadline")
    op.execute("ALTER TABLE jobs DROP COLUMN deadline, DROP COLUMN cancel_reason")
