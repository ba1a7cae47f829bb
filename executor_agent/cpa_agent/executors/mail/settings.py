"""Settings of the mail executors, read on the agent from the environment (prefix CPA_MAIL_).

The client secret lives here and nowhere else: it comes from the agent's environment or a file
the agent reads, never from the scheduler, and it is kept as a SecretStr so that no repr, log
line or error message shows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
DEFAULT_GRAPH_URL = "https://graph.microsoft.com/v1.0"
DEFAULT_SCOPE = "https://graph.microsoft.com/.default"


class MailSettings(BaseSettings):
    """Mail executor configuration: `MailSettings()` reads CPA_MAIL_*; keyword arguments win."""

    model_config = SettingsConfigDict(env_prefix="CPA_MAIL_", extra="forbid")

    authority_host: str = Field(
        default=DEFAULT_AUTHORITY_HOST,
        description="https URL of the Microsoft Entra (AAD) instance; the tenant is appended.",
    )
    tenant_id: str = Field(default="", description="Directory (tenant) id or domain.")
    client_id: str = Field(default="", description="Application (client) id of the app.")
    client_secret: SecretStr | None = Field(
        default=None, description="The app's client secret (prefer client_secret_file)."
    )
    client_secret_file: Path | None = Field(
        default=None, description="File holding the client secret (surrounding blanks ignored)."
    )
    graph_url: str = Field(
        default=DEFAULT_GRAPH_URL, description="Base URL of Microsoft Graph, version included."
    )
    scope: str = Field(default=DEFAULT_SCOPE, description="Scope asked for (client credentials).")
    ca_bundle: Path | None = Field(
        default=None,
        description="PEM file of CAs trusted for both the token endpoint and Graph; unset: "
        "the system's. REQUESTS_CA_BUNDLE and proxies from the environment are not used.",
    )
    mailbox: str = Field(
        default="",
        description="Default mailbox (user id or user principal name) mail is sent from and "
        "read in; a task's params.mailbox overrides it.",
    )
    max_send_attachment_bytes: int = Field(
        default=3_000_000,
        ge=0,
        description="Most bytes of attachments (all together) one send_mail attaches. Graph "
        "takes at most 4 MB per sendMail request and base64 adds a third: 3 000 000 bytes "
        "still fit (larger files would need an upload session, which is not implemented).",
    )
    max_read_attachment_bytes: int = Field(
        default=25 * 1024 * 1024,
        ge=0,
        description="Largest attachment read_mail saves as an artifact; larger ones are listed "
        "as skipped.",
    )
    max_read_messages: int = Field(
        default=100, ge=1, description="Largest `top` read_mail and search_mail accept."
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest wait for one HTTP call (token or Graph)."
    )
    max_throttle_retries: int = Field(
        default=3,
        ge=0,
        description="How often one action waits out a Graph 429 (Retry-After) before it fails "
        "retryable.",
    )
    max_retry_after_s: float = Field(
        default=60.0,
        ge=0,
        description="Longest Retry-After waited out in the action; a longer one fails the "
        "attempt retryable at once (the task's retry policy waits instead).",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        for name in ("authority_host", "graph_url"):
            value: str = getattr(self, name)
            if not value.startswith("https://"):
                raise ValueError(f"{name} must be an https URL (MSAL and Graph need TLS)")
            setattr(self, name, value.rstrip("/"))
        if self.client_secret is not None and self.client_secret_file is not None:
            raise ValueError("set client_secret or client_secret_file, not both")
        return self

    def missing(self) -> list[str]:
        """The CPA_MAIL_* variables still needed before mail can be sent (empty: configured)."""
        missing = [
            f"CPA_MAIL_{name.upper()}"
            for name in ("tenant_id", "client_id", "mailbox")
            if not getattr(self, name)
        ]
        if self.client_secret is None and self.client_secret_file is None:
            missing.append("CPA_MAIL_CLIENT_SECRET or CPA_MAIL_CLIENT_SECRET_FILE")
        return missing

    @property
    def authority(self) -> str:
        """The authority URL MSAL takes: instance host plus tenant."""
        return f"{self.authority_host}/{self.tenant_id}"

    def read_client_secret(self) -> str:
        """The client secret, from the setting or its file. Raises ValueError (naming the file,
        never the content) when there is none."""
        if self.client_secret is not None:
            secret = self.client_secret.get_secret_value()
        elif self.client_secret_file is not None:
            try:
                secret = self.client_secret_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as error:
                raise ValueError(
                    f"cannot read CPA_MAIL_CLIENT_SECRET_FILE {str(self.client_secret_file)!r}: "
                    f"{type(error).__name__}"
                ) from None
        else:
            raise ValueError("no client secret configured")
        if not secret:
            raise ValueError("the configured client secret is empty")
        return secret


def load_settings() -> MailSettings:
    """MailSettings from the environment; a ValueError (not a pydantic dump, which could echo
    a secret's input) when a value is malformed."""
    try:
        return MailSettings()
    except ValidationError as error:
        problems = "; ".join(
            f"CPA_MAIL_{'.'.join(str(p) for p in e['loc']).upper() or 'SETTINGS'}: {e['msg']}"
            for e in error.errors(include_input=False)
        )
        raise ValueError(f"invalid mail settings: {problems}") from None
