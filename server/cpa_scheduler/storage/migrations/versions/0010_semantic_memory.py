"""Long-term semantic memory (docs/MEMORY.md): finished jobs' request text, plan and outcome with
the unit-length embedding of the text. No pgvector here (docs/adr/
0004-memory-vectors-in-postgresql.md): a float4[] ranked by an exact cosine over the tenant's rows.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE memory_records (
            memory_id text COLLATE "C" NOT NULL PRIMARY KEY,
            tenant text COLLATE "C" NOT NULL,
            text text NOT NULL,
            plan jsonb NOT NULL,
            outcome text NOT NULL,
            failure_reason text NOT NULL,
            job_id text NOT NULL,
            created double precision NOT NULL,
            embedding float4[] NOT NULL
        )
        """
    )
    # A search reads one tenant's rows (of one outcome when filtered), never another's.
    op.execute("CREATE INDEX memory_by_tenant ON memory_records (tenant, outcome)")


def downgrade() -> None:
    op.execute("DROP TABLE memory_records")
