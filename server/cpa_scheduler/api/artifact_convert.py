"""Artifacts between domain and `_pb2` (part of the conversion layer, like job_views.py)."""

from __future__ import annotations

from cpa.common.v1 import artifact_pb2
from cpa_scheduler.domain import ArtifactRecord

from .proto_values import timestamp


def artifact_to_proto(job_id: str, artifact: ArtifactRecord) -> artifact_pb2.Artifact:
    return artifact_pb2.Artifact(
        artifact_id=artifact.artifact_id,
        name=artifact.name,
        media_type=artifact.media_type,
        size_bytes=artifact.size_bytes,
        sha256=artifact.sha256,
        job_id=job_id,
        task_id=artifact.task_id,
        attempt=artifact.attempt,
        create_time=timestamp(artifact.create_time),
    )
