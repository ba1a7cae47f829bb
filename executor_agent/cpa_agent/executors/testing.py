"""Stand-ins for the scheduler's side of an ExecutionContext, to test an executor on its own:
artifacts kept in memory and secrets from a dict. The agent itself never uses them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from cpa_agent.executors.base import ArtifactInfo, ExecutorError


class MemoryArtifacts:
    """Artifacts in a dict: `saved` holds what the executor stored, `inputs` what it may read."""

    def __init__(self, inputs: Mapping[str, tuple[str, str, bytes]] | None = None) -> None:
        self.saved: dict[str, tuple[ArtifactInfo, bytes]] = {}
        self._inputs = dict(inputs or {})
        """input name -> (artifact name, media type, bytes)"""

    async def save(self, name: str, media_type: str, data: bytes) -> ArtifactInfo:
        info = _info(name, media_type, data)
        self.saved[name] = (info, data)
        return info

    async def read_input(self, input_name: str) -> tuple[ArtifactInfo, bytes]:
        if input_name not in self._inputs:
            raise ExecutorError(
                "INPUT_NOT_FOUND", f"no artifact input {input_name!r}", retryable=False
            )
        name, media_type, data = self._inputs[input_name]
        return _info(name, media_type, data), data


class StaticSecrets:
    """Secrets from a dict of reference -> value."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    async def get(self, ref: str) -> str:
        return self._values[ref]


def _info(name: str, media_type: str, data: bytes) -> ArtifactInfo:
    return ArtifactInfo(
        name=name,
        media_type=media_type,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
