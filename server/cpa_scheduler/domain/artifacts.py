"""Artifacts as the job sees them: the record of a file an attempt stored, and the rules of its
name, media type and digest. The bytes live elsewhere (cpa_scheduler.artifacts); this record on
the task is what makes an artifact visible, so it is written only once the bytes are complete."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from .errors import InvalidArgument, Reason, echo

# A task's artifacts are listed in every view of its job: bounded, so that a looping executor
# cannot push the job's answer past a client's receive limit (about 200 bytes each).
MAX_ARTIFACTS_PER_TASK = 1000
MAX_ARTIFACT_NAME_BYTES = 255
MAX_MEDIA_TYPE_CHARS = 255
DEFAULT_MEDIA_TYPE = "application/octet-stream"

SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
# type/subtype (RFC 6838 restricted names), then optional parameters in printable ASCII.
_MEDIA_TYPE_PATTERN = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]{0,126}"
    r"(\s*;[\x20-\x7e]*)?"
)
# Names travel in file names (`cpa artifacts get -o`), mail attachments and logs.
_FORBIDDEN_NAME_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True, kw_only=True)
class ArtifactRecord:
    """A stored artifact of one attempt of one task (its job is the aggregate that holds it)."""

    artifact_id: str
    task_id: str
    attempt: int
    name: str
    media_type: str
    size_bytes: int
    sha256: str
    create_time: datetime


def check_artifact_name(name: str, field: str) -> None:
    """1-255 bytes of UTF-8 without '/', '\\' or control characters, not "." or ".."."""
    if not name:
        raise InvalidArgument("an artifact needs a name", reason=Reason.MISSING_FIELD, field=field)
    if (
        len(name.encode()) > MAX_ARTIFACT_NAME_BYTES
        or _FORBIDDEN_NAME_CHARS.search(name)
        or name in (".", "..")
    ):
        raise InvalidArgument(
            f"artifact name {echo(name)} must be 1-{MAX_ARTIFACT_NAME_BYTES} bytes without '/', "
            "'\\' or control characters, and not '.' or '..'",
            field=field,
        )


def check_media_type(media_type: str, field: str) -> str:
    """The media type to store: checked, empty means application/octet-stream."""
    if not media_type:
        return DEFAULT_MEDIA_TYPE
    if len(media_type) > MAX_MEDIA_TYPE_CHARS or not _MEDIA_TYPE_PATTERN.fullmatch(media_type):
        raise InvalidArgument(
            f"media type {echo(media_type)} is not `type/subtype` (at most "
            f"{MAX_MEDIA_TYPE_CHARS} printable ASCII characters)",
            field=field,
        )
    return media_type


def check_sha256(digest: str, field: str) -> None:
    if not digest:
        raise InvalidArgument("sha256 is required", reason=Reason.MISSING_FIELD, field=field)
    if not SHA256_PATTERN.fullmatch(digest):
        raise InvalidArgument(
            f"sha256 {echo(digest)} must be 64 lower-case hex digits", field=field
        )
