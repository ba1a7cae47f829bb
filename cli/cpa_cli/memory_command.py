"""`cpa memory search "<text>" [-k N] [--outcome succeeded|failed]`, `cpa memory put "<text>"
[--failed REASON]` and `cpa memory delete (ID | --job JOB_ID | --all)`: the tenant's long-term
memory of finished jobs (docs/MEMORY.md)."""

from __future__ import annotations

import argparse
from typing import Any

from cpa.scheduler.v1 import memory_pb2
from cpa_client import SchedulerClient

from .common import add_json_option, add_server_option, emit
from .jobs_command import client_command
from .output import table, to_json

_OUTCOMES = {
    "succeeded": memory_pb2.MEMORY_OUTCOME_SUCCEEDED,
    "failed": memory_pb2.MEMORY_OUTCOME_FAILED,
}


def register(commands: Any) -> None:
    memory: argparse.ArgumentParser = commands.add_parser(
        "memory",
        help="search, add to or delete from the memory of finished jobs",
        description="The tenant's long-term memory: finished jobs' request text, plan and "
        "outcome, searched by meaning (docs/MEMORY.md).",
    )
    actions = memory.add_subparsers(dest="memory_command", required=True, metavar="ACTION")
    search: argparse.ArgumentParser = actions.add_parser(
        "search",
        help="the remembered jobs closest in meaning to a text",
        description="List the records most similar to TEXT, most similar first.",
    )
    search.add_argument("text", metavar="TEXT")
    search.add_argument("-k", type=int, default=5, metavar="N", help="at most N (1-100; 5)")
    search.add_argument("--outcome", choices=sorted(_OUTCOMES), help="only this outcome")
    add_json_option(search, "a SearchMemoryResponse")
    add_server_option(search)
    search.set_defaults(run=client_command(_search))

    put: argparse.ArgumentParser = actions.add_parser(
        "put",
        help="remember a request text (and how it ended)",
        description="Add TEXT to the memory as a plan that succeeded, or with --failed as one "
        "that failed for REASON.",
    )
    put.add_argument("text", metavar="TEXT")
    put.add_argument("--failed", default=None, metavar="REASON", help="it failed, for REASON")
    add_server_option(put)
    put.set_defaults(run=client_command(_put))

    delete: argparse.ArgumentParser = actions.add_parser(
        "delete",
        help="forget one record, a job's records, or all of them",
        description="Delete the record ID, the records of job JOB_ID (--job), or every record "
        "of the tenant (--all). Unknown ids delete nothing (not an error).",
    )
    which = delete.add_mutually_exclusive_group(required=True)
    which.add_argument("memory_id", nargs="?", metavar="ID", help="a record's id")
    which.add_argument("--job", metavar="JOB_ID", help="the records of this job")
    which.add_argument("--all", action="store_true", help="every record of the tenant")
    add_server_option(delete)
    delete.set_defaults(run=client_command(_delete))


async def _search(client: SchedulerClient, arguments: argparse.Namespace) -> int:
    outcome = _OUTCOMES.get(arguments.outcome or "", memory_pb2.MEMORY_OUTCOME_UNSPECIFIED)
    hits = await client.search_memory(arguments.text, k=arguments.k, outcome=outcome)
    if arguments.json:
        emit(to_json(memory_pb2.SearchMemoryResponse(hits=hits)))
        return 0
    if not hits:
        emit("no memories")
        return 0
    rows = [
        [
            f"{hit.score:.3f}",
            memory_pb2.MemoryOutcome.Name(hit.record.outcome).removeprefix("MEMORY_OUTCOME_"),
            hit.record.job_id or "-",
            hit.record.text,
            hit.record.failure_reason or "-",
        ]
        for hit in hits
    ]
    for line in table(["SCORE", "OUTCOME", "JOB", "TEXT", "FAILURE"], rows):
        emit(line)
    return 0


async def _put(client: SchedulerClient, arguments: argparse.Namespace) -> int:
    failed = arguments.failed is not None
    record = await client.put_memory(
        memory_pb2.PutMemoryRequest(
            text=arguments.text,
            outcome=_OUTCOMES["failed" if failed else "succeeded"],
            failure_reason=arguments.failed or "",
        )
    )
    emit(f"remembered {record.memory_id}")
    return 0


async def _delete(client: SchedulerClient, arguments: argparse.Namespace) -> int:
    deleted = await client.delete_memories(
        memory_pb2.DeleteMemoriesRequest(
            memory_id=arguments.memory_id or "", job_id=arguments.job or "", all=arguments.all
        )
    )
    emit(f"deleted {deleted} memor{'y' if deleted == 1 else 'ies'}")
    return 0
