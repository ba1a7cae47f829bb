"""Serving: the listener, TLS, health, shutdown, message and call limits, logging, garbage
collection."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings


class ServingSettings(BaseSettings):
    """Serving settings (CPA_*; see Settings)."""

    listen_address: str = Field(
        default="127.0.0.1:50051", description="host:port the gRPC server binds."
    )
    # TLS on the gRPC listener (cpa_scheduler.tls; docs/SECURITY.md).
    tls_cert_file: Path | None = Field(
        default=None,
        description="PEM certificate chain the gRPC listener presents (leaf first); with "
        "tls_key_file it turns TLS on. Empty: plaintext. Reloaded on SIGHUP and when the file "
        "changes (see tls_reload_check_s); open connections keep the certificate they have.",
    )
    tls_key_file: Path | None = Field(
        default=None,
        description="PEM private key (unencrypted) of tls_cert_file; keep it readable by the "
        "server's user only.",
    )
    tls_client_ca_file: Path | None = Field(
        default=None,
        description="PEM CA certificates that sign client certificates: set, every connection "
        "(agents, CLI, SDK, the gateway) must present a certificate they signed (mutual TLS); "
        "gRPC's Python server cannot ask for an optional one. Needs tls_cert_file.",
    )
    tls_reload_check_s: float = Field(
        default=5.0,
        gt=0,
        description="At most this often (checked when a client connects) the server looks "
        "whether the TLS files changed and, if the new pair is usable, hands it to the next "
        "connections; SIGHUP reloads at once.",
    )
    health_probe_interval_s: float = Field(
        default=2.0,
        gt=0,
        description="How often a replica checks its store (SELECT 1) and, in the distributed "
        "mode, Redis (PING); a failed or slow check turns grpc.health.v1 NOT_SERVING for every "
        "service until a check succeeds again.",
    )
    health_probe_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="How long one health check may take before it counts as failed.",
    )
    shutdown_unready_s: float = Field(
        default=0.0,
        ge=0,
        description="When the server stops: how long it keeps serving calls after turning "
        "NOT_SERVING, so load balancers (the gateway's health checks) take it out of rotation "
        "before it stops listening; set it to their detection time (e.g. 2 x "
        "CPA_GATEWAY_HEALTH_INTERVAL_S). The agents' drain runs meanwhile.",
    )
    shutdown_drain_s: float = Field(
        # With --grace 5 and the background stop, a stop fits Kubernetes' default 30 s.
        default=15.0,
        ge=0,
        description="When the server stops: how long its agents get to finish their running "
        "attempts and move to another replica before it closes their streams.",
    )
    max_request_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest request the server accepts; larger ones fail with PAYLOAD_TOO_LARGE.",
    )
    max_assignment_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest message sent to an agent (an assignment, a batch); must not exceed "
        "the agents' CPA_AGENT_MAX_RECEIVE_BYTES (an agent's hello says its own, and the smaller "
        "wins). A larger assignment fails its task unsent with ASSIGNMENT_TOO_LARGE.",
    )
    list_jobs_page_max_bytes: int = Field(
        default=3 * 1024 * 1024,
        ge=64 * 1024,
        description="Most bytes of jobs in one ListJobs page: a page ends before it would pass "
        "this (and at page_size); a single larger job is returned alone. The default keeps "
        "pages under a default client's 4 MiB receive limit.",
    )
    max_concurrent_rpcs: int = Field(
        default=20_000,
        ge=1,
        description="Calls in progress at once on one replica, every agent stream and WatchJob "
        "stream included; beyond, calls are refused with RESOURCE_EXHAUSTED (TOO_MANY_CALLS) "
        "and a warning is logged (at most one per 10 s).",
    )
    max_pending_rpcs: int = Field(
        default=20_000,
        ge=1,
        description="Calls gRPC holds arrived but not yet taken by the server (a burst of "
        "opens); beyond, gRPC itself cancels new calls (CANCELLED) before the server sees them.",
    )
    # Rate limits and quotas (docs/SECURITY.md, "Rate limits and quotas").
    replica_id: str = Field(
        default="", description="Name of this server process; empty: host name and pid."
    )
    log_level: str = Field(default="INFO", description="Python logging level name.")
    gc_full_collection_interval_s: float = Field(
        default=120.0,
        ge=0,
        description="While serving, Python's full garbage collections run once per this many "
        "seconds instead of whenever the heap grew by a quarter (every few seconds under heavy "
        "WatchJob fan-out, each stopping the replica for as long as the heap is large); the "
        "objects that exist at start are left out of them, and young collections run after "
        "10 000 new objects instead of 700. Only cyclic garbage waits for them. 0: Python's own "
        "schedule (docs/PERFORMANCE.md).",
    )
