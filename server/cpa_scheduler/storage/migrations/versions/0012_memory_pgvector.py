"""pgvector for long-term memory, where the server has it (docs/adr/
0004-memory-vectors-in-postgresql.md): the extension, and `embedding_vector`, the float4[]
embedding as a pgvector `vector`, generated from it (so every writer, and every row already
there, has both; the store's search uses the vector when it can). A server without the
extension (Debian's PostgreSQL) gets nothing here and keeps the exact float4[] search.

The HNSW index is not made here: it is per vector width, a setting of the replicas
(CPA_MEMORY_EMBEDDING_DIMENSIONS), so the store makes the index of its width when it opens
(cpa_scheduler/memory/pgvector.py).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    connection = op.get_bind()
    available = connection.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    ).first()
    if available is None:
        return
    # Creating an extension may need rights the migrating role lacks: then the schema stays
    # without it (as on a server without pgvector) rather than the migration failing; a DBA can
    # create it and migrate again from 0011 (docs/MEMORY.md).
    try:
        with connection.begin_nested():
            connection.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
    except sa.exc.DBAPIError:
        return
    op.execute(
        "ALTER TABLE memory_records ADD COLUMN embedding_vector vector "
        "GENERATED ALWAYS AS (embedding::vector) STORED"
    )


def downgrade() -> None:
    # The store's HNSW indexes are on this column and go with it. The extension stays: other
    # schemas of the database may use it.
    op.execute("ALTER TABLE memory_records DROP COLUMN IF EXISTS embedding_vector")
