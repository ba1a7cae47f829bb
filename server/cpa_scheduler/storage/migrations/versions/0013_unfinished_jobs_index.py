"""Quotas: an index of the unfinished jobs by tenant, so that counting a tenant's active jobs
(Store.tenant_load, read by the quota check once per CPA_QUOTA_CACHE_S) walks those jobs only,
not the tenant's whole history. The predicate is the query's, word for word (records.py): a
partial index serves only a query whose WHERE says its predicate.

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX jobs_unfinished ON jobs (tenant) "
        "WHERE state IN ('PENDING', 'RUNNING', 'WAITING_APPROVAL')"
    )


def downgrade() -> None:
    op.execute("DROP INDEX jobs_unfinished")
