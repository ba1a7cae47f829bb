"""Artifacts: their bytes, content-addressed per tenant and chunked, so every replica serves them.

`artifact_content` says which (tenant, sha256) is complete and under which content id; the
bytes are rows of `artifact_chunks` under that id, at most 1 MiB each. An upload writes its
chunks under a fresh content id and inserts the content row last, in one statement: until then
the chunks belong to nothing and nobody reads them (a cut-off upload's are deleted). The
artifacts' metadata (name, task, attempt) is part of the job, in the tasks rows.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE artifact_content (
            tenant TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            content_id TEXT NOT NULL UNIQUE,
            size_bytes BIGINT NOT NULL,
            create_time TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant, sha256)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE artifact_chunks (
            content_id TEXT NOT NULL,
            sequence INTEGER NOT NULL,
            data BYTEA NOT NULL,
            create_time TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (content_id, sequence)
        )
        """
    )
    # Chunks are read and written as they are: compressing PDFs and PNGs gains nothing.
    op.execute("ALTER TABLE artifact_chunks ALTER COLUMN data SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.execute("DROP TABLE artifact_chunks")
    op.execute("DROP TABLE artifact_content")
