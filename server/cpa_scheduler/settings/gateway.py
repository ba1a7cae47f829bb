"""The REST/gRPC-web gateway (Envoy) started by `cpa gateway`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings


class GatewaySettings(BaseSettings):
    """Fields of Settings (CPA_*): the REST/gRPC-web gateway (Envoy) started by `cpa gateway`."""

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
