"""API keys and agent tokens: the SHA-256 of each secret under its public key id, the tenant and
roles it acts with, and when it was created and revoked (docs/SECURITY.md).

Revision ID: 0008
Revises: 0007
Create Date: 2027-01-10
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE api_keys (
            key_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            roles TEXT NOT NULL,
            secret_sha256 TEXT NOT NULL,
            description TEXT NOT NULL,
            created_by TEXT NOT NULL,
            agent_actions_json TEXT NOT NULL,
            agent_capabilities_json TEXT NOT NULL,
            create_time TIMESTAMPTZ NOT NULL,
            revoke_time TIMESTAMPTZ
        )
        """
    )
    op.execute("CREATE INDEX api_keys_by_tenant ON api_keys (tenant, create_time DESC)")


def downgrade() -> None:
    op.execute("DROP TABLE api_keys")
