"""Event retention: an index to walk finished jobs in order of their end, so the sweeper finds
the jobs whose events may be pruned without scanning every job.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE INDEX jobs_end ON jobs (end_time, job_id) WHERE end_time IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP INDEX jobs_end")
