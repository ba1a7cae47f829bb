"""`cpa submit --batch FILE.jsonl`: one ScheduleJobRequest per line, in the API's JSON (the
body `POST /v1/jobs` takes: `{"requestId": "r-1", "spec": {"text": "..."}}`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from cpa.scheduler.v1 import scheduler_service_pb2 as pb

from .common import CliError


@dataclass(frozen=True)
class RequestsFile:
    """The requests of a file, and the line each came from (blank lines are skipped)."""

    path: str
    requests: list[pb.ScheduleJobRequest]
    lines: list[int]


def read_requests_file(path: str) -> RequestsFile:
    """The file's requests; a CliError naming file and line for the first that does not parse."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CliError(f"cannot read {path}: {error}") from None
    requests, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            requests.append(json_format.Parse(line, pb.ScheduleJobRequest()))
        except json_format.ParseError as error:
            raise CliError(f"{path}:{number}: not a ScheduleJobRequest: {error}") from None
        lines.append(number)
    if not requests:
        raise CliError(f"{path}: no requests (one ScheduleJobRequest in JSON per line)")
    return RequestsFile(path=path, requests=requests, lines=lines)
