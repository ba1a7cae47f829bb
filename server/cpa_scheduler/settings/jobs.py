"""Jobs: their size, leases, retries, timeouts, idempotency, watchers, events and audit."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings

# An idle agent still shows it is alive at least this often (ListAgents' last_seen_time).
MAX_IDLE_HEARTBEAT_INTERVAL_S = 300.0


class JobSettings(BaseSettings):
    """Jobs settings (CPA_*; see Settings)."""

    max_tasks_per_job: int = Field(default=10_000, ge=1, description="Most tasks one job may have.")
    default_max_parallelism: int = Field(
        default=64, ge=1, description="Tasks of one job running at once when the job names none."
    )
    lease_duration_s: float = Field(
        default=15.0,
        gt=0,
        description="How long an attempt stays assigned without a heartbeat before it is lost.",
    )
    heartbeat_interval_s: float = Field(
        default=3.0, gt=0, description="How often agents send heartbeats (told in the welcome)."
    )
    idle_heartbeat_interval_s: float = Field(
        default=0.0,
        ge=0,
        description="How often an agent running no attempt sends heartbeats (told in the "
        "welcome; 0: heartbeat_interval_s). An idle agent's heartbeat renews no lease, it only "
        "shows the agent is alive: on a replica holding thousands of mostly idle agents a longer "
        "interval saves their heartbeats' CPU (docs/PERFORMANCE.md). The server ends an idle "
        "session silent for twice this (a lease while it holds attempts; a dead connection is "
        "also noticed by HTTP/2 keepalive within 30 s), and an agent given an attempt while idle "
        "heartbeats within heartbeat_interval_s. Between heartbeat_interval_s and "
        f"{MAX_IDLE_HEARTBEAT_INTERVAL_S:g} s; outside, the server refuses to start.",
    )
    max_redeliveries: int = Field(
        default=3,
        ge=0,
        description="Lost attempts (agent gone) a task survives before it fails; retries of "
        "application errors are bounded separately by the retry policy.",
    )
    task_timeout_grace_s: float = Field(
        default=5.0,
        ge=0,
        description="How long past a task's timeout the server waits for the agent's own "
        "report before it fails the attempt with TASK_TIMEOUT and refuses a later result.",
    )
    idempotency_retention_s: float = Field(
        default=86_400.0,
        gt=0,
        description="How long a request id keeps returning the job it created; after that "
        "the id may be used again for a new job.",
    )
    max_cancel_reason_bytes: int = Field(
        default=1024,
        ge=0,
        description="Longest reason (UTF-8 bytes) CancelJob and a LAM cancel accept; a longer "
        "one is refused with PAYLOAD_TOO_LARGE (it is stored, and sent to the agents).",
    )
    task_error_details_max_bytes: int = Field(
        default=16 * 1024,
        ge=0,
        description="Most bytes (compact JSON) of an agent's TaskError.details the server keeps "
        "with the attempt (the browser's page URL, DOM excerpt, evidence names); larger "
        'details are replaced by {"details_dropped": "<why>"} and the failure is recorded as '
        "usual. They are stored with every attempt and sent in every view of the job.",
    )
    max_watchers_per_replica: int = Field(
        default=20_000,
        ge=1,
        description="Most WatchJob streams open at once on this replica; beyond, WatchJob fails "
        "with RESOURCE_EXHAUSTED (TOO_MANY_WATCHERS).",
    )
    max_watchers_per_tenant: int = Field(
        default=10_000,
        ge=1,
        description="Most WatchJob streams one tenant may have open at once on this replica; "
        "beyond, WatchJob fails with RESOURCE_EXHAUSTED (TOO_MANY_WATCHERS).",
    )
    watch_buffer_events: int = Field(
        default=256,
        ge=1,
        description="Live events kept per watched job for its watchers (shared); a watcher "
        "further behind, or one that meets a gap, re-reads the store from the last event it "
        "received.",
    )
    watch_heartbeat_s: float = Field(
        default=15.0,
        ge=0,
        description="A WatchJob stream that had nothing to send for this long gets a heartbeat "
        "(a WatchJobResponse without event), so proxies' idle timeouts do not close a quiet "
        "watch; keep it well under gateway_stream_idle_timeout_s (`cpa gateway` refuses one "
        "that is not larger). 0 sends no heartbeats.",
    )
    event_retention_s: float = Field(
        default=7 * 86_400.0,
        gt=0,
        description="How long the events of a finished job are kept; then the sweeper deletes "
        "all of them but the last (terminal) one.",
    )
    audit_retention_days: float = Field(
        default=365.0,
        ge=0,
        description="How long audit entries are kept; then the sweeper deletes them, oldest "
        "first. 0 keeps them for ever. The only way an entry leaves the store (docs/AUDIT.md).",
    )
    audit_refusals_per_minute: int = Field(
        default=60,
        ge=0,
        description="Refused calls of one principal (or peer, without credentials) audited one "
        "by one per minute and replica; beyond, they are counted and the count is written with "
        "the principal's next audited refusal (AuditEntry.suppressed).",
    )
    audit_refusals_total_per_minute: int = Field(
        default=1200,
        ge=0,
        description="Refused calls audited one by one per minute and replica, all principals "
        "together: many forged identities cannot multiply the writes either.",
    )

    @model_validator(mode="after")
    def _idle_heartbeats_keep_sessions(self) -> Self:
        idle_s = self.idle_heartbeat_interval_s
        if idle_s and not self.heartbeat_interval_s <= idle_s <= MAX_IDLE_HEARTBEAT_INTERVAL_S:
            raise ValueError(
                f"idle_heartbeat_interval_s ({idle_s:g}) must be 0 or between "
                f"heartbeat_interval_s ({self.heartbeat_interval_s:g}) and "
                f"{MAX_IDLE_HEARTBEAT_INTERVAL_S:g}"
            )
        return self
