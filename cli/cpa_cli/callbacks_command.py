"""`cpa callbacks list [--state dead|pending|delivered] [--job JOB_ID]` and `cpa callbacks retry
DELIVERY_ID... | --all-dead`: the callback deliveries of jobs with a callback URL, and the
re-drive of dead letters (docs/CALLBACKS.md)."""

from __future__ import annotations

import argparse
from typing import Any

from cpa.scheduler.v1 import callback_pb2
from cpa_client import SchedulerClient

from .common import CliError, add_json_option, add_server_option, emit
from .jobs_command import client_command
from .output import table, to_json

_STATES = {
    "pending": callback_pb2.CALLBACK_STATE_PENDING,
    "delivered": callback_pb2.CALLBACK_STATE_DELIVERED,
    "dead": callback_pb2.CALLBACK_STATE_DEAD,
}


def register(commands: Any) -> None:
    callbacks: argparse.ArgumentParser = commands.add_parser(
        "callbacks",
        help="list callback deliveries, re-drive dead-lettered ones",
        description="The messages POSTed to jobs' callback URLs (docs/CALLBACKS.md).",
    )
    actions = callbacks.add_subparsers(dest="callbacks_command", required=True, metavar="ACTION")
    listing: argparse.ArgumentParser = actions.add_parser(
        "list",
        help="list callback deliveries, oldest first",
        description="List the callback deliveries of your tenant with their state, attempts, "
        "next attempt and last error.",
    )
    listing.add_argument("--state", choices=sorted(_STATES), help="only deliveries in this state")
    listing.add_argument("--job", default="", metavar="JOB_ID", help="only this job's")
    add_json_option(listing, "a ListCallbacksResponse")
    add_server_option(listing)
    listing.set_defaults(run=client_command(_list))

    retry: argparse.ArgumentParser = actions.add_parser(
        "retry",
        help="send dead-lettered deliveries again",
        description="Make dead-lettered deliveries pending again (same delivery id and body, "
        "attempts counted from 0). Naming one that is not dead fails and changes nothing.",
    )
    retry.add_argument("delivery_ids", nargs="*", metavar="DELIVERY_ID")
    retry.add_argument("--all-dead", action="store_true", help="every dead-lettered delivery")
    retry.add_argument(
        "--max", type=int, default=0, metavar="N", help="with --all-dead: at most N (default 100)"
    )
    add_server_option(retry)
    retry.set_defaults(run=client_command(_retry))


def _rows(deliveries: list[callback_pb2.Callback]) -> list[list[str]]:
    rows = []
    for d in deliveries:
        state = callback_pb2.CallbackState.Name(d.state).removeprefix("CALLBACK_STATE_")
        due = d.next_attempt_time.ToJsonString() if d.HasField("next_attempt_time") else "-"
        rows.append(
            [
                d.delivery_id,
                d.job_id,
                d.event_type,
                state,
                str(d.attempts),
                due,
                d.last_error or "-",
            ]
        )
    return rows


_HEADER = ["DELIVERY", "JOB", "EVENT", "STATE", "ATTEMPTS", "NEXT ATTEMPT", "LAST ERROR"]


async def _list(client: SchedulerClient, arguments: argparse.Namespace) -> int:
    state = _STATES[arguments.state] if arguments.state else callback_pb2.CALLBACK_STATE_UNSPECIFIED
    found = [d async for d in client.list_callbacks(state=state, job_id=arguments.job)]
    if arguments.json:
        emit(to_json(callback_pb2.ListCallbacksResponse(callbacks=found)))
        return 0
    if not found:
        emit("no callback deliveries")
        return 0
    for line in table(_HEADER, _rows(found)):
        emit(line)
    return 0


async def _retry(client: SchedulerClient, arguments: argparse.Namespace) -> int:
    if bool(arguments.delivery_ids) == arguments.all_dead:
        raise CliError("name DELIVERY_IDs or give --all-dead (one of the two)")
    redriven = await client.retry_callbacks(
        arguments.delivery_ids, all_dead=arguments.all_dead, max_callbacks=arguments.max
    )
    emit(f"re-driven: {len(redriven)}")
    for line in table(_HEADER, _rows(redriven)) if redriven else []:
        emit(line)
    return 0
