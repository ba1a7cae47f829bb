"""The embedded store's file: its schema, the upgrades of files an older server wrote, and the
connection settings (WAL, synchronous=NORMAL, checkpoints left to the store's worker thread).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA_VERSION = 7
# What each version adds to the one before (files of an older server are upgraded at open).
_UPGRADES = {
    2: (
        "ALTER TABLE jobs ADD COLUMN cancel_reason TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE jobs ADD COLUMN deadline INTEGER",
    ),
    3: (
        "ALTER TABLE tasks ADD COLUMN start_by INTEGER",
        "ALTER TABLE tasks ADD COLUMN timeout_at INTEGER",
    ),
    4: ("ALTER TABLE jobs ADD COLUMN cancel_message TEXT NOT NULL DEFAULT ''",),
    5: (),  # the callback outbox: a new table, which the schema below creates
    6: (),  # api_keys: likewise
    7: (),  # the audit trail: new tables and triggers, which the schema below creates
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    tenant TEXT NOT NULL,
    job_id TEXT NOT NULL PRIMARY KEY,
    request_id TEXT NOT NULL,
    request_fingerprint TEXT NOT NULL,
    intent TEXT NOT NULL,
    state TEXT NOT NULL,
    source_json TEXT NOT NULL,
    options_json TEXT NOT NULL,
    error_json TEXT NOT NULL,
    dead_lettered INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL,
    cancel_reason TEXT NOT NULL DEFAULT '',
    cancel_message TEXT NOT NULL DEFAULT '',
    retry_count INTEGER NOT NULL,
    conversation_id TEXT NOT NULL,
    last_event_sequence INTEGER NOT NULL,
    deadline INTEGER,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    start_time INTEGER,
    end_time INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_request_id ON jobs (tenant, request_id)
    WHERE request_id != '';
CREATE INDEX IF NOT EXISTS jobs_listing ON jobs (tenant, create_time DESC, job_id DESC);
CREATE INDEX IF NOT EXISTS jobs_deadline ON jobs (deadline) WHERE deadline IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_request_age ON jobs (create_time) WHERE request_id != '';
CREATE INDEX IF NOT EXISTS jobs_end ON jobs (end_time, job_id) WHERE end_time IS NOT NULL;
CREATE TABLE IF NOT EXISTS job_labels (
    job_id TEXT NOT NULL REFERENCES jobs (job_id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (job_id, key)
);
CREATE INDEX IF NOT EXISTS job_labels_lookup ON job_labels (key, value);
CREATE TABLE IF NOT EXISTS tasks (
    job_id TEXT NOT NULL REFERENCES jobs (job_id),
    task_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    todo_json TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    attempts_json TEXT NOT NULL,
    outputs_json TEXT NOT NULL,
    error_json TEXT NOT NULL,
    failures INTEGER NOT NULL,
    losses INTEGER NOT NULL,
    agent_id TEXT NOT NULL,
    lease_until INTEGER,
    next_attempt_time INTEGER,
    start_by INTEGER,
    timeout_at INTEGER,
    queue_time INTEGER,
    start_time INTEGER,
    end_time INTEGER,
    PRIMARY KEY (job_id, task_id)
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, lease_until);
CREATE INDEX IF NOT EXISTS tasks_start_by ON tasks (start_by) WHERE start_by IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL REFERENCES jobs (job_id),
    sequence INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    terminal INTEGER NOT NULL,
    payload_json TEXT NOT NULL,
    PRIMARY KEY (job_id, sequence)
);
CREATE TABLE IF NOT EXISTS lam_messages (
    tenant TEXT NOT NULL,
    message_id TEXT NOT NULL,
    inbound INTEGER NOT NULL,
    conversation_id TEXT NOT NULL,
    performative TEXT NOT NULL,
    sender TEXT NOT NULL,
    job_id TEXT NOT NULL,
    body_json TEXT NOT NULL,
    create_time INTEGER NOT NULL,
    PRIMARY KEY (tenant, message_id, inbound)
);
CREATE INDEX IF NOT EXISTS lam_by_conversation ON lam_messages (tenant, conversation_id);
CREATE TABLE IF NOT EXISTS callback_deliveries (
    tenant TEXT NOT NULL,
    delivery_id TEXT NOT NULL PRIMARY KEY,
    message_id TEXT NOT NULL,
    job_id TEXT NOT NULL REFERENCES jobs (job_id),
    sequence INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    url TEXT NOT NULL,
    body_json TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_time INTEGER NOT NULL,
    claimed_until INTEGER,
    claim_token TEXT NOT NULL,
    last_error TEXT NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS callbacks_due ON callback_deliveries (next_attempt_time)
    WHERE state = 'PENDING';
CREATE INDEX IF NOT EXISTS callbacks_of_job ON callback_deliveries (job_id, sequence)
    WHERE state = 'PENDING';
CREATE INDEX IF NOT EXISTS callbacks_listing ON callback_deliveries
    (tenant, create_time, delivery_id);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT NOT NULL PRIMARY KEY,
    tenant TEXT NOT NULL,
    roles TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    description TEXT NOT NULL,
    created_by TEXT NOT NULL,
    agent_actions_json TEXT NOT NULL,
    agent_capabilities_json TEXT NOT NULL,
    create_time INTEGER NOT NULL,
    revoke_time INTEGER
);
CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON api_keys (tenant, create_time DESC);
CREATE TABLE IF NOT EXISTS audit_entries (
    entry_id TEXT NOT NULL PRIMARY KEY,
    tenant TEXT NOT NULL,
    create_time INTEGER NOT NULL,
    subject TEXT NOT NULL,
    roles TEXT NOT NULL,
    credential_kind TEXT NOT NULL,
    credential_id TEXT NOT NULL,
    home_tenant TEXT NOT NULL,
    peer TEXT NOT NULL,
    action TEXT NOT NULL,
    job_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    task_action TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    policy_decision TEXT NOT NULL,
    result_code TEXT NOT NULL,
    result_reason TEXT NOT NULL,
    result_message TEXT NOT NULL,
    result_field TEXT NOT NULL,
    artifact_ids TEXT NOT NULL,
    request_id TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    suppressed INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_listing ON audit_entries (tenant, create_time, entry_id);
CREATE INDEX IF NOT EXISTS audit_of_job ON audit_entries (tenant, job_id, create_time)
    WHERE job_id != '';
CREATE INDEX IF NOT EXISTS audit_age ON audit_entries (create_time);
-- Append-only: no statement may change an entry, and only the retention prune, which holds a
-- row here for the length of its delete, may remove them (SqliteAudit._prune_audit).
CREATE TABLE IF NOT EXISTS audit_prune_gate (open INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_entries_no_update BEFORE UPDATE ON audit_entries
BEGIN
    SELECT RAISE(ABORT, 'audit entries are append-only');
END;
CREATE TRIGGER IF NOT EXISTS audit_entries_no_delete BEFORE DELETE ON audit_entries
    WHEN NOT EXISTS (SELECT 1 FROM audit_prune_gate)
BEGIN
    SELECT RAISE(ABORT, 'audit entries are append-only (only the retention prune deletes)');
END;
"""


def connect(path: Path | str) -> sqlite3.Connection:
    """The store's connection to `path`, its schema brought up to SCHEMA_VERSION; RuntimeError
    when the file was written by a newer server."""
    connection = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    # NORMAL: a commit survives a crash of this process (the promise); FULL would also
    # survive power loss at the price of an fsync per commit.
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA foreign_keys=ON")
    # Checkpoints run on a worker thread (SqliteStore._checkpoint_forever), never in a commit
    # on the event loop, where they stalled every request for ~100 ms.
    connection.execute("PRAGMA wal_autocheckpoint=0")
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        connection.close()
        raise RuntimeError(
            f"{path} has schema version {version}, newer than this server's "
            f"{SCHEMA_VERSION}: upgrade the server"
        )
    if version:  # an existing file: bring it up to date before the schema's indexes
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _UPGRADES[step]:
                connection.execute(statement)
    connection.executescript(_SCHEMA)
    connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return connection
