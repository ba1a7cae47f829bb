"""The audit trail: an append-only table of who did what, why, with which result
(docs/AUDIT.md). Rows are written in the transaction of the change they record.

Append-only is enforced here too, not only by the store having no update path: a statement
trigger refuses every UPDATE, and every DELETE unless the transaction set `cpa.audit_prune` to
`on` (the retention prune does, with SET LOCAL). TRUNCATE, DROP and disabling the trigger stay
possible for the database's owner: this guards against the application, not a DBA.

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE audit_entries (
            entry_id text COLLATE "C" NOT NULL PRIMARY KEY,
            tenant text COLLATE "C" NOT NULL,
            create_time timestamptz NOT NULL,
            subject text COLLATE "C" NOT NULL,
            roles text NOT NULL,
            credential_kind text NOT NULL,
            credential_id text NOT NULL,
            home_tenant text NOT NULL,
            peer text NOT NULL,
            action text COLLATE "C" NOT NULL,
            job_id text COLLATE "C" NOT NULL,
            task_id text NOT NULL,
            attempt integer NOT NULL,
            task_action text NOT NULL,
            agent_id text NOT NULL,
            reason text NOT NULL,
            policy_decision text NOT NULL,
            result_code text COLLATE "C" NOT NULL,
            result_reason text NOT NULL,
            result_message text NOT NULL,
            result_field text NOT NULL,
            artifact_ids text NOT NULL,
            request_id text NOT NULL,
            trace_id text NOT NULL,
            suppressed integer NOT NULL
        )
        """
    )
    # ListAuditEntries: a tenant's rows, newest first; of one job; the prune: the oldest.
    op.execute("CREATE INDEX audit_listing ON audit_entries (tenant, create_time, entry_id)")
    op.execute(
        "CREATE INDEX audit_of_job ON audit_entries (tenant, job_id, create_time) "
        "WHERE job_id <> ''"
    )
    op.execute("CREATE INDEX audit_age ON audit_entries (create_time)")
    op.execute(
        """
        CREATE FUNCTION audit_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND current_setting('cpa.audit_prune', true) = 'on' THEN
                RETURN NULL;
            END IF;
            RAISE EXCEPTION 'audit entries are append-only (% refused)', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_entries_append_only BEFORE UPDATE OR DELETE ON audit_entries "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_entries_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TABLE audit_entries")
    op.execute("DROP FUNCTION audit_entries_append_only()")
