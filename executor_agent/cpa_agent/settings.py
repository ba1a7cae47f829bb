"""Settings of the executor agent, read from the environment (prefix CPA_AGENT_).

Keyword arguments win over the environment; lists and mappings are given as JSON
(`CPA_AGENT_LABELS='{"site": "berlin"}'`).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cpa_agent.telemetry.metrics import split_address
from cpa_client.channels import ClientTls


def _default_agent_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class AgentSettings(BaseSettings):
    """Agent configuration: `AgentSettings()` reads CPA_AGENT_* variables; keyword arguments win."""

    # No .env file: the scheduler's .env forbids unknown CPA_* keys, so the two cannot share one.
    model_config = SettingsConfigDict(env_prefix="CPA_AGENT_", extra="forbid")

    server: str = Field(default="127.0.0.1:50051", description="host:port of the scheduler.")
    agent_id: str = Field(
        default_factory=_default_agent_id,
        min_length=1,
        description="Identifier stable across reconnects; default host name and process id.",
    )
    name: str = Field(default_factory=socket.gethostname, description="Display name.")
    tenant: str = Field(
        default="",
        description="Tenant the agent serves; empty: its token's (or, on a server with "
        "authentication off, the server's default tenant). A tenant other than the token's is "
        "refused at hello.",
    )
    token: SecretStr = Field(
        default=SecretStr(""),
        description="Agent token (`cpa keys create --role agent`) or API key sent with every "
        "call (metadata authorization: Bearer ...); empty: none, for a server with "
        "authentication off.",
    )
    token_file: Path | None = Field(
        default=None,
        description="A file holding the token instead of `token` (a compose or Kubernetes "
        "secret, the key file `cpa keys create --secret-file` wrote); read at start.",
    )
    slots: int = Field(default=4, ge=1, description="How many attempts run at once.")
    labels: dict[str, str] = Field(
        default_factory=dict, description="Labels matched against ToDo.required_labels."
    )
    capabilities: list[str] = Field(
        default_factory=list,
        description="Capabilities matched against ToDo.required_capabilities.",
    )
    reconnect_initial_backoff_s: float = Field(
        default=0.1, gt=0, description="Upper bound of the first reconnect delay."
    )
    reconnect_max_backoff_s: float = Field(
        default=5.0, gt=0, description="Upper bound of any reconnect delay."
    )
    connect_timeout_s: float = Field(
        default=10.0, gt=0, description="How long to wait for the welcome after the hello."
    )
    drain_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="How long a drain waits for running attempts before handing them back.",
    )
    stop_grace_s: float = Field(
        default=5.0,
        ge=0,
        description="How long an action may take to end once stopped (timeout, cancel, drain); "
        "one that ignores the stop is abandoned and the attempt is reported without it.",
    )
    max_receive_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest server message accepted (gRPC max receive length); told to the "
        "server in the hello, which sends nothing larger. Keep it at least the server's "
        "CPA_MAX_ASSIGNMENT_BYTES (same default), or larger assignments fail.",
    )
    max_report_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest message sent to a server whose welcome names no limit (an older "
        "server); otherwise the welcome's max_report_bytes (the server's CPA_MAX_REQUEST_BYTES).",
    )

    executors: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Names of the `cpa.executors` entry points to load (comma-separated: "
        "`builtin,browser`); empty loads every installed one. A name no installed package "
        "offers stops the agent at start.",
    )
    secrets_dir: Path | None = Field(
        default=None,
        description="Directory of secret files: a bare credential reference NAME with no "
        "CPA_SECRET_<NAME> variable is the file NAME here.",
    )
    secret_provider: str = Field(
        default="",
        description="Import path `package.module:factory` of an extra SecretProvider (Vault and "
        "the like), asked before the built-in env:/file:/bare-name rules.",
    )

    metrics_address: str = Field(
        default="",
        description="host:port of this agent's Prometheus /metrics endpoint (port 0: any free "
        "one); empty: none.",
    )

    # TLS to the scheduler (cpa_client.channels; docs/SECURITY.md).
    tls: bool = Field(
        default=False,
        description="Speak TLS to the scheduler, trusting the system's CAs; implied by "
        "tls_ca_file and tls_cert_file.",
    )
    tls_ca_file: Path | None = Field(
        default=None,
        description="PEM CA certificates the scheduler's certificate must chain to (TLS).",
    )
    tls_cert_file: Path | None = Field(
        default=None,
        description="Client certificate (PEM) for a scheduler with mutual TLS; with "
        "tls_key_file. Read at every connect, so a renewed one is used from the next.",
    )
    tls_key_file: Path | None = Field(default=None, description="Private key of tls_cert_file.")
    tls_server_name: str = Field(
        default="",
        description="Name the scheduler's certificate must carry when it differs from the "
        "host dialled (an address list, a tunnel).",
    )

    log_level: str = Field(default="INFO", description="Python logging level name (CLI only).")
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="Log lines (CLI only): json, console, or auto (console on a terminal).",
    )
    # Tracing (docs/OBSERVABILITY.md): as the scheduler's CPA_TRACING_*.
    tracing_enabled: bool = Field(
        default=False,
        description="A span per attempt, child of the job's trace the assignment carries.",
    )
    tracing_endpoint: str = Field(default="", description="OTLP receiver; empty: not exported.")
    tracing_protocol: Literal["grpc", "http"] = Field(default="grpc", description="OTLP transport.")
    tracing_sampling_ratio: float = Field(
        default=1.0, ge=0.0, le=1.0, description="Share of traces the agent itself starts kept."
    )

    def client_tls(self) -> ClientTls | None:
        """The TLS of the connection to the scheduler; None: plaintext."""
        if not (self.tls or self.tls_ca_file or self.tls_cert_file or self.tls_key_file):
            return None
        return ClientTls(
            ca_file=self.tls_ca_file,
            cert_file=self.tls_cert_file,
            key_file=self.tls_key_file,
            server_name=self.tls_server_name,
        )

    @field_validator("tls_ca_file", "tls_cert_file", "tls_key_file", "token_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("metrics_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        value = value.strip()
        if value:
            split_address(value)  # ValueError naming the address: the agent does not start
        return value

    @field_validator("executors", mode="before")
    @classmethod
    def _split_executors(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @model_validator(mode="after")
    def _check_together(self) -> Self:
        if self.reconnect_max_backoff_s < self.reconnect_initial_backoff_s:
            raise ValueError("reconnect_max_backoff_s must be >= reconnect_initial_backoff_s")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_server_name and self.client_tls() is None:
            raise ValueError("tls_server_name goes with TLS (tls_ca_file or tls)")
        if self.token_file is not None:
            if self.token.get_secret_value():
                raise ValueError("token and token_file: give one")
            self.token = SecretStr(_read_token(self.token_file))
        return self


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"token_file {path}: cannot read it ({error})") from None
    if not token:
        raise ValueError(f"token_file {path} is empty")
    return token
