"""Metrics: the Prometheus /metrics endpoint of each replica (docs/OBSERVABILITY.md)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings


class MetricsSettings(BaseSettings):
    """Metrics settings (CPA_*; see Settings)."""

    metrics_address: str = Field(
        default="",
        description="host:port of this replica's Prometheus /metrics endpoint (port 0: any free "
        "one); empty: no endpoint, and the metric hooks cost one test each.",
    )
