"""The SQL of the PostgreSQL store: every statement it sends, with why it is written so.

Statements are built from records.py's column lists, so a column added there reaches every
statement that reads or writes the row.
"""

from __future__ import annotations

from typing import Final

from .audit_records import AUDIT_COLUMNS
from .callback_records import CALLBACK_COLUMNS
from .records import JOB_COLUMNS, JOB_STATE_COLUMNS, TASK_COLUMNS, TASK_STATE_COLUMNS

_JOB_STATE_COLUMNS: Final = tuple(c for c in JOB_STATE_COLUMNS if c != "job_id")
_EVENT_COLUMNS: Final = ("sequence", "create_time", "terminal", "payload_json")


def _rows_of(table: str, alias: str, parameter: str) -> str:
    """Rows typed as `table`'s from a JSON array of objects: one parameter for many rows,
    which psycopg passes far cheaper than one array per column."""
    return f"json_populate_recordset(NULL::{table}, %({parameter})s::json) AS {alias}"


JOB_SELECT: Final = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs"
TASK_SELECT: Final = f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks"
# Statements whose best plan depends on the tables' size (`= ANY(array)`, joins with a JSON
# array) are sent unprepared (`prepare=False`): a prepared statement keeps the generic plan
# made when it was first used, and one made while a new database's tables were nearly empty
# scans them whole for ever after (seen: 2 ms per batch after 2 000 jobs, growing with every
# job). Planning them costs little: each runs once per batch.
LOCK_JOBS: Final = (
    # ORDER BY: rows are locked in job_id order, the order every writer takes them in.
    f"{JOB_SELECT} WHERE job_id = ANY(%(job_ids)s) ORDER BY job_id FOR UPDATE"
)
SELECT_TASKS: Final = f"{TASK_SELECT} WHERE job_id = ANY(%(job_ids)s) ORDER BY job_id, position"
# The task rows of the locked jobs, except those of jobs whose cached aggregate is still valid
# (its version is the row's last_event_sequence): see aggregate_cache.py.
# Chosen per job, so the rows of a job whose aggregate is kept are not even scanned.
SELECT_UNCACHED_TASKS: Final = (
    f"{TASK_SELECT} WHERE job_id IN (SELECT j.job_id FROM jobs j "
    "LEFT JOIN unnest(%(cached_ids)s::text[], %(cached_versions)s::bigint[]) "
    "AS c(job_id, version) ON c.job_id = j.job_id "
    "WHERE j.job_id = ANY(%(job_ids)s) "
    "AND (c.version IS NULL OR c.version <> j.last_event_sequence)) "
    "ORDER BY job_id, position"
)


# The creations of a batch, in one statement: the jobs, their labels, tasks and events, but
# none of a job whose tenant already used its request_id (a duplicate another replica is
# inserting right now is waited for, then counts as a conflict). Returns the inserted job ids;
# rows are inserted in the order of the JSON array (the batch's lock order).
CREATE_JOBS: Final = f"""
    WITH job AS (
        INSERT INTO jobs ({", ".join(JOB_COLUMNS)})
        SELECT {", ".join(f"j.{c}" for c in JOB_COLUMNS)} FROM {_rows_of("jobs", "j", "jobs")}
        ON CONFLICT (tenant, request_id) WHERE request_id <> '' DO NOTHING
        RETURNING job_id
    ), label AS (
        INSERT INTO job_labels (job_id, key, value)
        SELECT l.job_id, l.key, l.value FROM {_rows_of("job_labels", "l", "labels")}
        WHERE l.job_id IN (SELECT job_id FROM job)
    ), task AS (
        INSERT INTO tasks ({", ".join(TASK_COLUMNS)})
        SELECT {", ".join(f"t.{c}" for c in TASK_COLUMNS)}
        FROM {_rows_of("tasks", "t", "tasks")}
        WHERE t.job_id IN (SELECT job_id FROM job)
    ), event AS (
        INSERT INTO events (job_id, {", ".join(_EVENT_COLUMNS)})
        SELECT e.job_id, {", ".join(f"e.{c}" for c in _EVENT_COLUMNS)}
        FROM {_rows_of("events", "e", "events")}
        WHERE e.job_id IN (SELECT job_id FROM job)
    )
    SELECT job_id FROM job
"""
# The changes of a batch, in one statement: every changed job's state columns, every dirty
# task, every new event (one row each: a job changed twice in the batch is written once, as
# it ended). `= ANY(%(job_ids)s)` tells the planner how few rows change (it assumes a JSON
# array holds 100), so that it looks them up by key instead of scanning the tables.
WRITE_CHANGES: Final = f"""
    WITH job AS (
        UPDATE jobs SET {", ".join(f"{c} = j.{c}" for c in _JOB_STATE_COLUMNS)}
        FROM {_rows_of("jobs", "j", "jobs")}
        WHERE jobs.job_id = ANY(%(job_ids)s) AND jobs.job_id = j.job_id
    ), task AS (
        UPDATE tasks SET {", ".join(f"{c} = t.{c}" for c in TASK_STATE_COLUMNS)},
            -- a transition ends a sweeper's claim: it was on an attempt that is now over
            sweep_claim_until = NULL
        FROM {_rows_of("tasks", "t", "tasks")}
        WHERE tasks.job_id = ANY(%(job_ids)s) AND tasks.job_id = t.job_id
            AND tasks.task_id = t.task_id
    )
    INSERT INTO events (job_id, {", ".join(_EVENT_COLUMNS)})
    SELECT e.job_id, {", ".join(f"e.{c}" for c in _EVENT_COLUMNS)}
    FROM {_rows_of("events", "e", "events")}
"""
# The callback outbox rows a batch made, in its transaction; only those of jobs that exist (a
# creation whose request id was taken inserted no job). Sent only when there are rows.
INSERT_CALLBACKS: Final = f"""
    INSERT INTO callback_deliveries ({", ".join(CALLBACK_COLUMNS)})
    SELECT {", ".join(f"c.{c}" for c in CALLBACK_COLUMNS)}
    FROM {_rows_of("callback_deliveries", "c", "callbacks")}
    WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = c.job_id)
    ON CONFLICT (delivery_id) DO NOTHING
"""
# The audit entries of a batch's changes, in its transaction; as for callbacks, only those of
# jobs that exist. Sent only when there are rows (every change made by a call or an agent's
# result has one).
INSERT_AUDIT: Final = f"""
    INSERT INTO audit_entries ({", ".join(AUDIT_COLUMNS)})
    SELECT {", ".join(f"a.{c}" for c in AUDIT_COLUMNS)}
    FROM {_rows_of("audit_entries", "a", "audit")}
    WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = a.job_id)
"""
# Who holds these request ids (pairs of tenant and request id). `request_id <> ''` proves the
# predicate of the partial unique index jobs_request_id, so a generic plan (prepared statements)
# can use it instead of scanning every job.
REQUEST_OWNERS: Final = """
    SELECT j.tenant, j.request_id, j.job_id, j.request_fingerprint
    FROM unnest(%(tenants)s::text[], %(request_ids)s::text[]) AS w (tenant, request_id)
    JOIN jobs j ON j.tenant = w.tenant AND j.request_id = w.request_id AND j.request_id <> ''
"""
# The one job that holds a request id (same index, same reason).
REQUEST_OWNER: Final = """
    SELECT job_id, request_fingerprint FROM jobs
    WHERE tenant = %(tenant)s AND request_id = %(request_id)s AND request_id <> ''
"""
SELECT_EVENTS: Final = """
    SELECT e.sequence, e.create_time, e.terminal, e.payload_json
    FROM jobs j
    LEFT JOIN LATERAL (
        SELECT sequence, create_time, terminal, payload_json FROM events
        WHERE events.job_id = j.job_id AND events.sequence > %(after)s
        ORDER BY sequence LIMIT %(limit)s
    ) e ON true
    WHERE j.job_id = %(job_id)s AND j.tenant = %(tenant)s
    ORDER BY e.sequence
"""
# Claims what it returns, so a second sweeper (another replica) does not do the same work:
# SKIP LOCKED passes over tasks, and jobs, that another transaction is changing right now, and
# the claim hides the returned attempts until `claim_until`. A sweeper that dies before
# handling them leaves them to the next sweep after that. Never waits for a lock.
CLAIM_EXPIRED: Final = """
    WITH expired AS MATERIALIZED (
        SELECT t.job_id, t.task_id, j.tenant FROM tasks t JOIN jobs j ON j.job_id = t.job_id
        WHERE t.state = 'RUNNING' AND t.lease_until < %(now)s
            AND (t.sweep_claim_until IS NULL OR t.sweep_claim_until <= %(now)s)
        ORDER BY t.lease_until, t.job_id, t.task_id
        LIMIT %(limit)s
        FOR UPDATE OF t SKIP LOCKED
        FOR KEY SHARE OF j SKIP LOCKED
    )
    UPDATE tasks t SET sweep_claim_until = %(claim_until)s
    FROM expired e
    WHERE t.job_id = e.job_id AND t.task_id = e.task_id
    RETURNING e.tenant, t.job_id, t.task_id, t.attempt, t.lease_until
"""
# A renewal first takes its jobs' rows (KEY SHARE: renewals do not exclude each other, job
# changes do), in job_id order, so it never holds a task a job change needs while waiting for
# that change's job.
LOCK_JOBS_FOR_RENEWAL: Final = """
    SELECT 1 FROM jobs WHERE job_id = ANY(%(job_ids)s) AND tenant = %(tenant)s
    ORDER BY job_id FOR KEY SHARE
"""
# The fence: only the current attempt of a RUNNING task of this tenant, held by the renewing
# agent, is renewed. Tasks are locked in (job_id, task_id) order, so two renewals of one task
# never wait in a cycle.
RENEW: Final = """
    WITH wanted (job_id, task_id, attempt) AS (
        SELECT * FROM unnest(%(job_ids)s::text[], %(task_ids)s::text[], %(attempts)s::int[])
    ), current AS MATERIALIZED (
        SELECT t.job_id, t.task_id FROM tasks t
        JOIN wanted w ON t.job_id = w.job_id AND t.task_id = w.task_id AND t.attempt = w.attempt
        WHERE t.state = 'RUNNING' AND t.agent_id = %(agent_id)s
            AND EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = t.job_id AND j.tenant = %(tenant)s)
        ORDER BY t.job_id, t.task_id
        FOR UPDATE OF t
    )
    -- LEAST ignores NULL: never past the attempt's timeout, where the server stops waiting.
    UPDATE tasks t SET lease_until = LEAST(%(lease_until)s, t.timeout_at)
    FROM current c
    WHERE t.job_id = c.job_id AND t.task_id = c.task_id
    RETURNING t.job_id, t.task_id, t.attempt
"""
INSERT_MESSAGE: Final = """
    INSERT INTO lam_messages (tenant, message_id, inbound, conversation_id, performative,
        sender, job_id, body_json, create_time)
    VALUES (%(tenant)s, %(message_id)s, %(inbound)s, %(conversation_id)s, %(performative)s,
        %(sender)s, %(job_id)s, %(body_json)s, %(create_time)s)
    ON CONFLICT (tenant, message_id, inbound) DO NOTHING
"""
