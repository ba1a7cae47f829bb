"""Callbacks (docs/CALLBACKS.md): the outbox's deliverer, one per replica."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings


class CallbackSettings(BaseSettings):
    """Callbacks (docs/CALLBACKS.md) settings (CPA_*; see Settings)."""

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
