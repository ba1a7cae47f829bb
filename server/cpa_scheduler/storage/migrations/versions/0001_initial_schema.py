"""Initial schema: jobs, their labels, tasks and events, and LAM messages.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Identifiers use the "C" collation: byte order, as in SQLite, so paging by job_id and the lock
# order of a write batch (sorted in Python) agree with the database whatever its locale.
# The *_json columns hold exactly the text codec writes (the store never queries inside them).
# Rows updated on every transition leave room on their page (fillfactor) for HOT updates.
_UPGRADE = (
    """
    CREATE TABLE jobs (
        tenant text COLLATE "C" NOT NULL,
        job_id text COLLATE "C" NOT NULL PRIMARY KEY,
        request_id text COLLATE "C" NOT NULL,
        request_fingerprint text NOT NULL,
        intent text COLLATE "C" NOT NULL,
        state text NOT NULL,
        source_json text NOT NULL,
        options_json text NOT NULL,
        error_json text NOT NULL,
        dead_lettered boolean NOT NULL,
        cancel_requested boolean NOT NULL,
        retry_count integer NOT NULL,
        conversation_id text COLLATE "C" NOT NULL,
        last_event_sequence bigint NOT NULL,
        create_time timestamptz NOT NULL,
        update_time timestamptz NOT NULL,
        start_time timestamptz,
        end_time timestamptz
    ) WITH (fillfactor = 80)
    """,
    # Idempotent creation: one job per (tenant, request_id) when a request_id is given.
    """
    CREATE UNIQUE INDEX jobs_request_id ON jobs (tenant, request_id) WHERE request_id <> ''
    """,
    "CREATE INDEX jobs_listing ON jobs (tenant, create_time DESC, job_id DESC)",
    """
    CREATE TABLE job_labels (
        job_id text COLLATE "C" NOT NULL REFERENCES jobs (job_id),
        key text COLLATE "C" NOT NULL,
        value text COLLATE "C" NOT NULL,
        PRIMARY KEY (job_id, key)
    )
    """,
    "CREATE INDEX job_labels_lookup ON job_labels (key, value, job_id)",
    """
    CREATE TABLE tasks (
        job_id text COLLATE "C" NOT NULL REFERENCES jobs (job_id),
        task_id text COLLATE "C" NOT NULL,
        position integer NOT NULL,
        todo_json text NOT NULL,
        state text NOT NULL,
        attempt integer NOT NULL,
        attempts_json text NOT NULL,
        outputs_json text NOT NULL,
        error_json text NOT NULL,
        failures integer NOT NULL,
        losses integer NOT NULL,
        agent_id text COLLATE "C" NOT NULL,
        lease_until timestamptz,
        next_attempt_time timestamptz,
        queue_time timestamptz,
        start_time timestamptz,
        end_time timestamptz,
        sweep_claim_until timestamptz,
        PRIMARY KEY (job_id, task_id)
    ) WITH (fillfactor = 80)
    """,
    # The reconciler's and the start-up recovery's question: what is QUEUED, oldest first.
    "CREATE INDEX tasks_queued ON tasks (queue_time) WHERE state = 'QUEUED'",
    # The sweeper's: which RUNNING tasks' leases ended. lease_until is deliberately in no index,
    # so a heartbeat's renewal stays a HOT update; the running set is bounded by agent slots.
    "CREATE INDEX tasks_running ON tasks (job_id, task_id) WHERE state = 'RUNNING'",
    """
    CREATE TABLE events (
        job_id text COLLATE "C" NOT NULL REFERENCES jobs (job_id),
        sequence bigint NOT NULL,
        create_time timestamptz NOT NULL,
        terminal boolean NOT NULL,
        payload_json text NOT NULL,
        PRIMARY KEY (job_id, sequence)
    )
    """,
    """
    CREATE TABLE lam_messages (
        tenant text COLLATE "C" NOT NULL,
        message_id text COLLATE "C" NOT NULL,
        inbound boolean NOT NULL,
        conversation_id text COLLATE "C" NOT NULL,
        performative text NOT NULL,
        sender text NOT NULL,
        job_id text COLLATE "C" NOT NULL,
        body_json text NOT NULL,
        create_time timestamptz NOT NULL,
        PRIMARY KEY (tenant, message_id, inbound)
    )
    """,
    """
    CREATE INDEX lam_by_conversation ON lam_messages (tenant, conversation_id, create_time)
    """,
)


def upgrade() -> None:
    for statement in _UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE lam_messages, events, tasks, job_labels, jobs")
