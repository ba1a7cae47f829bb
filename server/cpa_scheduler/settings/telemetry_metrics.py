"""Metrics: the Prometheus /metrics endpoint of each replica (docs/OBSERVABILITY.md)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from cpa_scheduler.telemetry.metrics_http import split_address


class MetricsSettings(BaseSettings):
    """Metrics settings (CPA_*; see Settings)."""

    metrics_address: str = Field(
        default="",
        description="host:port of this replica's Prometheus /metrics endpoint (port 0: any free "
        "one); empty: no endpoint, and the metric hooks cost one test each.",
    )
    metrics_queue_interval_s: float = Field(
        default=15.0,
        gt=0,
        description="How often a replica with metrics counts the QUEUED tasks and the PENDING "
        "callbacks in the store (job_queue_length, callbacks_pending).",
    )

    @field_validator("metrics_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        value = value.strip()
        if value:
            split_address(value)  # ValueError naming the address: the start stops
        return value
