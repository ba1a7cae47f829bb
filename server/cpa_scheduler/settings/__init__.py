"""Settings of the scheduler, read from the environment (prefix CPA_) and an optional .env file.

One module per concern holds its fields; `Settings` is all of them. Every setting is documented
in docs/CONFIGURATION.md; keep the two in step (tests/unit/test_settings_doc.py).
"""

from __future__ import annotations

from typing import Any

from pydantic import field_validator
from pydantic_settings import SettingsConfigDict

from .callbacks import CallbackSettings
from .gateway import GatewaySettings
from .jobs import JobSettings
from .llm import LLMSettings
from .memory import MemorySettings
from .planning import DEFAULT_INTENTS_PATH, PlanningSettings
from .planning_llm import PlanningLLMSettings
from .security import SecuritySettings
from .serving import ServingSettings
from .storage import StorageSettings
from .telemetry_metrics import MetricsSettings
from .telemetry_tracing import TracingSettings

__all__ = ["DEFAULT_INTENTS_PATH", "Settings"]


class Settings(
    PlanningSettings,
    PlanningLLMSettings,
    StorageSettings,
    ServingSettings,
    SecuritySettings,
    JobSettings,
    CallbackSettings,
    GatewaySettings,
    LLMSettings,
    MetricsSettings,
    MemorySettings,
    TracingSettings,
):
    """Scheduler configuration: `Settings()` reads CPA_* variables; keyword arguments win."""

    model_config = SettingsConfigDict(
        # Ignore, not forbid, unknown keys: the CLI and the agent read their own CPA_* ones.
        env_prefix="CPA_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

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
