"""The reason a caller gave when it cancelled a job (CancelJobRequest.reason), kept with the job.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE jobs ADD COLUMN cancel_message text NOT NULL DEFAULT ''")


def downgrade() -> None:
    op.execute("ALTER TABLE jobs DROP COLUMN cancel_message")
