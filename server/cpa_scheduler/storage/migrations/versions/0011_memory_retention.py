"""Retention of long-term memory (docs/MEMORY.md, "Retention and deletion"): the sweep deletes
the oldest expired records of any tenant (index on created); a put that takes a tenant past its
cap deletes the tenant's oldest (index on tenant, created, memory_id), knowing the tenant's
count from memory_tenants rather than counting its records on every put.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE INDEX memory_by_created ON memory_records (created)")
    op.execute("CREATE INDEX memory_by_age ON memory_records (tenant, created, memory_id)")
    op.execute(
        """
        CREATE TABLE memory_tenants (
            tenant text COLLATE "C" NOT NULL PRIMARY KEY,
            records bigint NOT NULL
        )
        """
    )
    op.execute(
        "INSERT INTO memory_tenants SELECT tenant, count(*) FROM memory_records GROUP BY tenant"
    )


def downgrade() -> None:
    op.execute("DROP TABLE memory_tenants")
    op.execute("DROP INDEX memory_by_age")
    op.execute("DROP INDEX memory_by_created")
