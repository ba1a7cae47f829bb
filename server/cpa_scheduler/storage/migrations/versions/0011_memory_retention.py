"""Retention of long-term memory (docs/MEMORY.md, "Retention and deletion"): the sweep deletes
the oldest expired records of any tenant (index on created), and every put keeps the tenant
under its cap by reading its records newest first (index on tenant, created).

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
    op.execute("CREATE INDEX memory_by_tenant_created ON memory_records (tenant, created)")


def downgrade() -> None:
    op.execute("DROP INDEX memory_by_tenant_created")
    op.execute("DROP INDEX memory_by_created")
