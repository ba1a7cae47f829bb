"""Storage and queue: the store, Redis, artifacts and the reconciler."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings


class StorageSettings(BaseSettings):
    """Storage and queue settings (CPA_*; see Settings)."""

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
    artifact_upload_idle_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Longest an upload (UploadArtifact) may send nothing, header included, "
        "before the server ends it DEADLINE_EXCEEDED (UPLOAD_STALLED) and stores nothing: a "
        "stalled or hostile agent cannot hold an upload open for ever.",
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
