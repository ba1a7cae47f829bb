"""Security: rate limits, quotas, tenants, page tokens, API keys, JWTs and policies."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings


class SecuritySettings(BaseSettings):
    """Security settings (CPA_*; see Settings)."""

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
