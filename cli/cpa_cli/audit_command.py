"""`cpa audit [--job J] [--principal P] [--action A] [--result R] [--since T] [--until T]
[--limit N] [--json]`: the audit trail of your tenant, newest first (docs/AUDIT.md)."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from cpa.scheduler.v1 import audit_pb2
from cpa_client import SchedulerClient

from .common import CliError, add_json_option, add_server_option, emit
from .jobs_command import client_command
from .output import table, timestamp_text, to_json

_DEFAULT_LIMIT = 100
_AGO = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def register(commands: Any) -> None:
    audit: argparse.ArgumentParser = commands.add_parser(
        "audit",
        help="list the audit trail: who did what, why, with which result",
        description="List your tenant's audit entries, newest first: scheduled, cancelled and "
        "re-driven jobs, LAM requests, task outcomes with their screenshots, refused calls "
        "(docs/AUDIT.md).",
    )
    audit.add_argument("--job", default="", metavar="JOB_ID", help="only this job's entries")
    audit.add_argument(
        "--principal", default="", metavar="SUBJECT", help='only this principal\'s ("key:ab12")'
    )
    audit.add_argument(
        "--action", default="", help='only this action ("CancelJob", "TaskResult", ...)'
    )
    audit.add_argument("--result", default="", help='only this result ("OK", "NOT_FOUND", ...)')
    for option, what in (("--since", "at or after"), ("--until", "before")):
        audit.add_argument(
            option,
            metavar="TIME",
            help=f"only entries written {what} TIME: RFC 3339 (2030-01-02T03:04:05Z) or an "
            "age (30s, 15m, 2h, 7d)",
        )
    audit.add_argument(
        "--limit",
        type=int,
        default=_DEFAULT_LIMIT,
        metavar="N",
        help=f"at most N entries (default {_DEFAULT_LIMIT}; 0 for all)",
    )
    add_json_option(audit, "a ListAuditEntriesResponse")
    add_server_option(audit)
    audit.set_defaults(run=client_command(_list))


def parse_time(text: str, option: str, *, now: datetime) -> datetime:
    """An RFC 3339 time (UTC when it names no offset) or an age before `now`."""
    if match := _AGO.fullmatch(text.strip()):
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CliError(
            f"audit: {option} {text!r} is neither an RFC 3339 time nor an age like 15m"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _rows(entries: list[audit_pb2.AuditEntry]) -> list[list[str]]:
    rows = []
    for e in entries:
        what = e.job_id or "-"
        if e.task_id:
            what += f"/{e.task_id}#{e.attempt}"
        result = e.result_code + (f" {e.result_reason}" if e.result_reason else "")
        rows.append(
            [
                timestamp_text(e.create_time),
                e.principal,
                e.action,
                what,
                result,
                e.reason or e.result_message or "-",
                str(len(e.artifact_ids)) if e.artifact_ids else "-",
            ]
        )
    return rows


_HEADER = ["TIME", "PRINCIPAL", "ACTION", "JOB/TASK", "RESULT", "WHY / MESSAGE", "SHOTS"]


async def _list(client: SchedulerClient, arguments: argparse.Namespace) -> int:
    if arguments.limit < 0:
        raise CliError("audit: --limit must be >= 0")
    now = datetime.now(UTC)
    since = parse_time(arguments.since, "--since", now=now) if arguments.since else None
    until = parse_time(arguments.until, "--until", now=now) if arguments.until else None
    found: list[audit_pb2.AuditEntry] = []
    async for entry in client.list_audit_entries(
        job_id=arguments.job,
        principal=arguments.principal,
        action=arguments.action,
        result=arguments.result,
        start_time=since,
        end_time=until,
        page_size=min(arguments.limit, 1000) if arguments.limit else 0,
    ):
        found.append(entry)
        if arguments.limit and len(found) >= arguments.limit:
            break
    if arguments.json:
        emit(to_json(audit_pb2.ListAuditEntriesResponse(entries=found)))
        return 0
    if not found:
        emit("no audit entries")
        return 0
    for line in table(_HEADER, _rows(found)):
        emit(line)
    return 0
