"""Settings of the scheduler, read from the environment (prefix CPA_) and an optional .env file.

Every setting is documented in docs/CONFIGURATION.md; keep the two in step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_INTENTS_PATH = Path(__file__).parent / "planning" / "intents.yaml"


class Settings(BaseSettings):
    """Scheduler configuration: `Settings()` reads CPA_* variables; keyword arguments win."""

    model_config = SettingsConfigDict(
        # Ignore, not forbid, unknown keys: the CLI and the agent read their own CPA_* ones.
        env_prefix="CPA_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    intents_path: Path = Field(
        default=DEFAULT_INTENTS_PATH,
        description="YAML catalog of intents for the rule-based router.",
    )
    routing_text_max_bytes: int = Field(
        default=1024,
        ge=1,
        description="Longest text (UTF-8 bytes) routed to an intent; longer is INVALID_ARGUMENT "
        "(TEXT_TOO_LONG).",
    )
    template_render_max_bytes: int = Field(
        default=1024 * 1024,
        ge=1,
        description="Most text one intent's task templates may render for one request, all "
        "tasks together; more is INVALID_ARGUMENT (TEMPLATE_LIMIT_EXCEEDED).",
    )
    template_render_max_steps: int = Field(
        default=10_000,
        ge=1,
        description="Most loop iterations and calls one intent's task templates may take for "
        "one request; more is INVALID_ARGUMENT (TEMPLATE_LIMIT_EXCEEDED).",
    )
    data_dir: Path = Field(
        default=Path("data"),
        description="Directory of the embedded store (SQLite file) and stored artifacts.",
    )
    database_url: str = Field(
        default="",
        description="PostgreSQL URL; empty selects the embedded SQLite store under data_dir.",
    )
    redis_url: str = Field(
        default="",
        description="Redis URL of the work queue and event fan-out; empty: in-process.",
    )
    database_pool_size: int = Field(
        default=10, ge=1, description="Most PostgreSQL connections of one replica."
    )
    artifact_max_bytes: int = Field(
        default=50 * 1024 * 1024,
        ge=0,
        description="Largest artifact an agent may upload (UploadArtifact); larger is "
        "RESOURCE_EXHAUSTED (ARTIFACT_TOO_LARGE) and nothing is stored.",
    )
    artifact_database_pool_size: int = Field(
        default=4,
        ge=1,
        description="Most PostgreSQL connections one replica uses for artifact bytes (apart "
        "from database_pool_size, so uploads never starve the job store).",
    )
    redis_pool_size: int = Field(
        default=64,
        ge=2,
        description="Most Redis connections of one replica; a burst beyond waits for one.",
    )
    redis_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Longest wait for one Redis call (connecting included): a Redis that stops "
        "answering fails calls after this instead of holding them.",
    )
    redis_key_prefix: str = Field(
        default="cpa", description="Prefix of every Redis key and channel of this deployment."
    )
    queue_claim_idle_s: float = Field(
        default=10.0,
        gt=0,
        description="How long work taken by a replica may stay unacknowledged before another "
        "replica takes it over (a replica that died while dispatching).",
    )
    reconcile_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often QUEUED tasks the store holds are published to the queue again, "
        "so a crash between commit and publish or a wiped Redis loses nothing.",
    )
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
    rate_limits_enabled: bool = Field(
        default=True,
        description="Whether calls are rate limited (per credential and per client address); "
        "beyond a limit calls fail with RESOURCE_EXHAUSTED (RATE_LIMITED) and a RetryInfo delay.",
    )
    rate_limit_per_key: int = Field(
        default=1000,
        ge=0,
        description="Calls a minute per credential (per tenant while calls carry no credential), "
        "all at once after a quiet minute; a tenant's calls_per_minute in tenant_limits_path "
        "overrides it. 0: no limit.",
    )
    rate_limit_per_ip: int = Field(
        default=100,
        ge=0,
        description="Calls a minute per client address (an IPv6 client: per /64), all at once "
        "after a quiet minute. 0: no limit.",
    )
    trusted_proxies: str = Field(
        default="",
        description="Comma-separated addresses or CIDR networks of proxies (the gateway) whose "
        "x-forwarded-for header names the client for the per-address limit; from any other "
        "peer the header is ignored. Empty: the TCP peer is the client.",
    )
    rate_limit_redis_timeout_s: float = Field(
        default=0.25,
        gt=0,
        description="Longest wait for the shared buckets in Redis; a Redis that fails or is "
        "slower makes this replica limit on its own (per replica) for a second, with a warning.",
    )
    max_active_jobs_per_tenant: int = Field(
        default=0,
        ge=0,
        description="Jobs of one tenant not yet SUCCEEDED, FAILED or CANCELLED; a submission "
        "past it fails with RESOURCE_EXHAUSTED (QUOTA_EXCEEDED). 0: no quota.",
    )
    max_queued_tasks_per_tenant: int = Field(
        default=0,
        ge=0,
        description="Tasks of one tenant ready and waiting for an agent; a submission whose new "
        "ready tasks would pass it fails with RESOURCE_EXHAUSTED (QUOTA_EXCEEDED). 0: no quota.",
    )
    quota_cache_s: float = Field(
        default=1.0,
        ge=0,
        description="How long a replica reuses a tenant's counts (active jobs, queued tasks) "
        "read from the store, adding what it submitted itself meanwhile; other replicas' "
        "submissions within this window may pass a quota.",
    )
    tenant_limits_path: Path | None = Field(
        default=None,
        description="YAML file of per-tenant overrides (calls_per_minute, max_active_jobs, "
        "max_queued_tasks under tenants.<name>); read at start.",
    )
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
    default_tenant: str = Field(
        default="default",
        description="Tenant of callers and agents that name none (the embedded default has one).",
    )
    page_token_secrets: str = Field(
        default="",
        description="Comma-separated secrets (each at least 16 characters) that sign page "
        "tokens: the first signs, every one verifies, so a new one is put first and an old one "
        "dropped once its tokens are no longer in use. Every replica needs the same list; "
        "required with database_url. Empty in the embedded mode: a random secret is kept in "
        "data_dir/page_token.secret.",
    )
    replica_id: str = Field(
        default="", description="Name of this server process; empty: host name and pid."
    )
    # Callbacks (docs/CALLBACKS.md): the outbox's deliverer, one per replica.
    callback_secrets_file: Path | None = Field(
        default=None,
        description='JSON file of the keys that sign callbacks: {"tenants": {tenant: '
        '{"key_id": ..., "secret": ...}}, "default": {...}}; a tenant without an '
        'entry uses "default". Empty: one key kept in data_dir/callback.secret (made on '
        "first start; replicas sharing a database need this file, the same on each).",
    )
    callback_allow_private: bool = Field(
        default=False,
        description="Allow callback URLs whose host is (or resolves to) a private, loopback, "
        "link-local, multicast, unspecified or otherwise non-public address.",
    )
    callback_allowed_networks: str = Field(
        default="",
        description="Comma-separated CIDRs callbacks may reach although not public "
        "(e.g. 10.20.0.0/16 for an internal receiver).",
    )
    callback_ca_file: Path | None = Field(
        default=None,
        description="PEM bundle of the CAs callback receivers' certificates must chain to; "
        "empty: the system's trust store.",
    )
    callback_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Longest one callback POST may take (connecting included); then it "
        "counts as a failed attempt.",
    )
    callback_max_attempts: int = Field(
        default=10,
        ge=1,
        description="Attempts of one callback before it is dead-lettered (`cpa callbacks "
        "retry` re-drives it).",
    )
    callback_backoff_initial_s: float = Field(
        default=1.0,
        gt=0,
        description="Cap of the first retry delay of a callback; each later cap doubles, up to "
        "callback_backoff_max_s; the delay is uniformly random below the cap (full jitter).",
    )
    callback_backoff_max_s: float = Field(
        default=600.0,
        gt=0,
        description="Largest retry delay of a callback, a Retry-After included.",
    )
    callback_claim_s: float = Field(
        default=60.0,
        gt=0,
        description="How long a replica holds the callbacks it is delivering; one that dies "
        "mid-delivery leaves them to another replica after this long. Keep it above "
        "callback_timeout_s.",
    )
    callback_poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often the deliverer looks for due callbacks when it has not been "
        "woken (new callbacks of this replica wake it at once).",
    )
    callback_concurrency: int = Field(
        default=16, ge=1, description="Callbacks one replica delivers at once."
    )
    # The Envoy gateway (`cpa gateway`, `cpa serve --with-gateway`; docs/GATEWAY.md). Its body
    # limit is max_request_bytes above: REST and gRPC callers get the same budget.
    gateway_deploy_dir: Path | None = Field(
        default=None,
        description="Directory holding envoy/envoy.yaml.j2, api.binpb and openapi/ (the "
        "repository's deploy/); empty: the deploy/ next to the sources (a checkout), else the "
        "copy a wheel install put under <prefix>/share/cpa-scheduler/deploy.",
    )
    gateway_admin_address: str = Field(
        default="127.0.0.1:0",
        description="host:port of the gateway's Envoy admin interface (readiness, stats); "
        "port 0 picks a free one. Keep it on loopback: it can stop Envoy.",
    )
    gateway_stream_idle_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="The gateway closes a stream (agent Connect, WatchJob) that carried no bytes "
        "for this long; agents' heartbeats (heartbeat_interval_s) keep theirs open.",
    )
    gateway_max_response_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024 * 1024,
        description="Largest gRPC response the gateway turns into JSON (it holds it whole); "
        "larger ones answer 500. Keep it above list_jobs_page_max_bytes and a full job's size.",
    )
    gateway_health_interval_s: float = Field(
        default=2.0,
        gt=0,
        description="How often the gateway checks each upstream's grpc.health.v1 status; two "
        "failed checks take a replica out of rotation, one good check brings it back.",
    )
    gateway_max_connections: int = Field(
        default=20_000,
        ge=1,
        description="Client connections the gateway holds open at once (each agent holds one); "
        "beyond, new connections are refused.",
    )
    gateway_access_log: str = Field(
        default="",
        description="File the gateway writes its JSON access log lines to; empty: its stdout.",
    )
    gateway_upstream_tls_ca_file: Path | None = Field(
        default=None,
        description="Set: the gateway speaks TLS to the schedulers (whose CPA_TLS_CERT_FILE is "
        "set), trusting only certificates this PEM CA file signed. Empty: plaintext HTTP/2.",
    )
    gateway_upstream_tls_server_name: str = Field(
        default="",
        description="With gateway_upstream_tls_ca_file: the name the gateway sends (SNI) and "
        "requires in the schedulers' certificates (DNS subject alternative name). Empty: any "
        "certificate the CA signed is accepted.",
    )
    gateway_upstream_tls_cert_file: Path | None = Field(
        default=None,
        description="Client certificate (PEM) the gateway presents to schedulers with mutual "
        "TLS (CPA_TLS_CLIENT_CA_FILE); with gateway_upstream_tls_key_file.",
    )
    gateway_upstream_tls_key_file: Path | None = Field(
        default=None, description="Private key of gateway_upstream_tls_cert_file."
    )
    gateway_tls_cert_file: Path | None = Field(
        default=None,
        description="Set with gateway_tls_key_file: the gateway's listener speaks TLS (HTTPS for "
        "REST callers, TLS for gRPC ones) with this PEM certificate chain. Empty: plaintext.",
    )
    gateway_tls_key_file: Path | None = Field(
        default=None, description="Private key of gateway_tls_cert_file."
    )
    gateway_cors_allowed_origins: str = Field(
        default="",
        description="Comma-separated origins (scheme://host[:port]) whose browser pages may call "
        "the gateway (gRPC-web and REST), or * for any; empty: no cross-origin calls.",
    )
    gateway_log_level: str = Field(
        default="warning",
        description="Envoy's own log level (trace, debug, info, warning, error, critical, off).",
    )
    # Authentication (docs/SECURITY.md).
    insecure_local: bool = Field(
        default=False,
        description="Authentication off: every caller acts as admin of the tenant it names in "
        "metadata x-cpa-tenant (or default_tenant), as before authentication existed. Only on a "
        "loopback listen_address (the server refuses to start otherwise); for tests, the demo "
        "and a single-user machine.",
    )
    auth_cache_ttl_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="How long a replica trusts what it read of an API key (valid, revoked, "
        "unknown) before reading it again: a revocation is refused by every replica within this "
        "bound, and the agent and WatchJob streams opened with it end within it too. Calls "
        "within it cost no database read.",
    )
    jwt_issuer: str = Field(
        default="",
        description="Issuer (`iss`) of accepted JWT bearer tokens; empty: JWTs are not accepted.",
    )
    jwt_audience: str = Field(
        default="",
        description="Audience (`aud`) a JWT must name; required with jwt_issuer.",
    )
    jwt_jwks_url: str = Field(
        default="",
        description="URL of the issuer's JWKS (RS256/ES256 public keys), read at the first "
        "token and again when a token names an unknown `kid` (at most once per "
        "jwt_jwks_refresh_min_s).",
    )
    jwt_jwks_file: Path | None = Field(
        default=None,
        description="A JWKS file instead of jwt_jwks_url (read the same way).",
    )
    jwt_hmac_secret: str = Field(
        default="",
        description="Shared secret of HS256 tokens (at least 32 characters); empty: HS256 "
        "tokens are refused.",
    )
    jwt_algorithms: str = Field(
        default="RS256,ES256",
        description="Comma-separated signature algorithms accepted (of HS256, RS256, ES256); "
        "a token signed otherwise is CREDENTIAL_INVALID.",
    )
    jwt_clock_skew_s: float = Field(
        default=30.0,
        ge=0,
        le=600,
        description="Leeway for a JWT's exp, nbf and iat against this server's clock.",
    )
    jwt_tenant_claim: str = Field(
        default="cpa_tenant", description="JWT claim holding the caller's tenant."
    )
    jwt_roles_claim: str = Field(
        default="cpa_roles",
        description="JWT claim holding the caller's roles: a list, or a space- or "
        "comma-separated string; names that are no role are ignored, none at all is refused.",
    )
    jwt_jwks_refresh_min_s: float = Field(
        default=30.0,
        ge=0,
        description="Least time between two reads of the JWKS caused by unknown `kid`s, so "
        "tokens with made-up key ids cannot make the server hammer the issuer.",
    )
    policy_dir: Path | None = Field(
        default=None,
        description="Directory of tenant policies (docs/POLICY.md): <tenant>.yaml per tenant, "
        "_default.yaml for tenants without one. Empty: no policies. Loaded at start (a broken "
        "file stops the start, naming file and line).",
    )
    policy_reload_interval_s: float = Field(
        default=5.0,
        ge=0,
        description="How often the policy directory is checked for changed files; changed "
        "policies replace the ones in force, all at once (a broken file keeps them and is "
        "logged). 0: loaded at start only.",
    )
    log_level: str = Field(default="INFO", description="Python logging level name.")

    @field_validator(
        "tls_cert_file",
        "tls_key_file",
        "tls_client_ca_file",
        "gateway_upstream_tls_ca_file",
        "gateway_upstream_tls_cert_file",
        "gateway_upstream_tls_key_file",
        "gateway_tls_cert_file",
        "gateway_tls_key_file",
        "jwt_jwks_file",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        # CPA_TLS_CERT_FILE= (a compose file's blank) means "not set", not the directory ".".
        return None if isinstance(value, str) and not value.strip() else value
