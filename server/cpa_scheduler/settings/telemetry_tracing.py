"""Tracing and structured logs (docs/OBSERVABILITY.md): OpenTelemetry export, log format."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings


class TracingSettings(BaseSettings):
    """Tracing and log format settings (CPA_*; see Settings)."""

    tracing_enabled: bool = Field(
        default=False,
        description="Trace RPCs, store transactions, queue operations, callbacks and LLM calls "
        "with OpenTelemetry and keep each job's trace context for its agents. Off: no "
        "interceptor is installed and no context is kept (zero cost).",
    )
    tracing_endpoint: str = Field(
        default="",
        description="OTLP receiver (a collector): host:port or http://host:4317 for gRPC, "
        "http://host:4318/v1/traces for HTTP. Empty: spans are made but not exported.",
    )
    tracing_protocol: Literal["grpc", "http"] = Field(
        default="grpc", description="OTLP transport of tracing_endpoint: grpc or http."
    )
    tracing_sampling_ratio: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="Share of new traces kept (0 to 1); a caller's sampled trace is always "
        "continued (parent-based).",
    )
    tracing_service_name: str = Field(
        default="cpa-scheduler", description="service.name of this process's spans."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="Log lines: json (one object per line), console (for a person), or auto "
        "(console on a terminal, else json).",
    )
