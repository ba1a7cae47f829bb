"""`cpa jobs list|get|cancel|retry` and `cpa watch`: look at and steer jobs on a scheduler."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from cpa.scheduler.v1 import job_pb2, scheduler_service_pb2
from cpa_client import SchedulerClient

from .common import CliError, add_json_option, add_server_option, client_tls, emit
from .credentials import api_key_for
from .live import follow
from .output import (
    job_list,
    job_state,
    reason_name,
    render_job,
    render_outcome,
    table,
    to_json,
)

DEFAULT_LIST_LIMIT = 50
_MAX_PAGE_SIZE = 1000
DEFAULT_RETRY_MAX_JOBS = 100
_FILTER_EXAMPLES = (
    "'state = FAILED', 'labels.team = \"ops\"', "
    "'dead_lettered = true', 'create_time >= \"2026-01-01T00:00:00Z\"', joined by AND"
)


def register(commands: Any) -> None:
    jobs: argparse.ArgumentParser = commands.add_parser(
        "jobs",
        help="list, show, cancel or retry jobs",
        description="Look at and steer the jobs of a scheduler.",
    )
    actions = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")

    listing: argparse.ArgumentParser = actions.add_parser(
        "list",
        help="list jobs",
        description="List jobs, newest first as the scheduler orders them.",
    )
    listing.add_argument(
        "--filter",
        default="",
        metavar="F",
        help=f"AIP-160 filter, e.g. {_FILTER_EXAMPLES}",
    )
    listing.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIST_LIMIT,
        metavar="N",
        help=f"show at most N jobs; 0 shows all (default {DEFAULT_LIST_LIMIT})",
    )
    add_view_option(listing, "basic")
    add_json_option(listing, "a ListJobsResponse")
    add_server_option(listing)
    listing.set_defaults(run=client_command(_list))

    get: argparse.ArgumentParser = actions.add_parser(
        "get", help="show one job and its tasks", description="Show a job and its tasks."
    )
    get.add_argument("job_id", metavar="JOB_ID")
    add_view_option(get, "full")
    add_json_option(get, "the Job")
    add_server_option(get)
    get.set_defaults(run=client_command(_get))

    cancel: argparse.ArgumentParser = actions.add_parser(
        "cancel",
        help="cancel a job",
        description="Cancel a job: queued tasks are dropped, running ones are stopped on their "
        "agents.",
    )
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.add_argument("--reason", default="", help="why, for the audit trail")
    add_json_option(cancel, "the Job")
    add_server_option(cancel)
    cancel.set_defaults(run=client_command(_cancel))

    retry: argparse.ArgumentParser = actions.add_parser(
        "retry",
        help="re-drive a failed job, or every one a filter matches",
        description="Re-drive a failed (dead-lettered) or cancelled job: its tasks that did not "
        "succeed run again. With --filter instead of JOB_ID, re-drive the FAILED and CANCELLED "
        "jobs the filter matches, newest first, at most --max-jobs of them; safe to run again "
        "for the rest.",
    )
    retry.add_argument("job_id", metavar="JOB_ID", nargs="?", help="the job to re-drive")
    retry.add_argument(
        "--filter",
        metavar="F",
        help=f"re-drive the matching jobs instead, e.g. 'dead_lettered = true'; {_FILTER_EXAMPLES}",
    )
    retry.add_argument(
        "--max-jobs",
        type=int,
        metavar="N",
        help="with --filter: re-drive at most N jobs, 1 to 1000 "
        f"(default {DEFAULT_RETRY_MAX_JOBS})",
    )
    retry.add_argument(
        "--dry-run",
        action="store_true",
        help="with --filter: only list the jobs that would be re-driven",
    )
    add_json_option(retry, "the Job (with --filter: a RetryJobsResponse)")
    add_server_option(retry)
    retry.set_defaults(run=client_command(_retry))

    watch: argparse.ArgumentParser = commands.add_parser(
        "watch",
        help="follow a job's events until it ends",
        description="Print a job's events as they happen (one line each: sequence, time since "
        "the job was created, task, change) until the terminal event. Exits 0 if the job "
        "SUCCEEDED, 1 otherwise.",
    )
    watch.add_argument("job_id", metavar="JOB_ID")
    watch.add_argument(
        "--after-sequence",
        type=int,
        default=0,
        metavar="N",
        help="resume after event N (default: from the first event)",
    )
    add_json_option(watch, "each event (one JSON object per line)")
    add_server_option(watch)
    watch.set_defaults(run=client_command(_watch))


VIEWS = {"basic": job_pb2.JOB_VIEW_BASIC, "full": job_pb2.JOB_VIEW_FULL}


def add_view_option(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--view",
        choices=sorted(VIEWS),
        default=default,
        help="basic leaves out params, outputs and context; full has everything "
        f"(default {default})",
    )


Command = Callable[[SchedulerClient, argparse.Namespace], Awaitable[int]]


def client_command(command: Command) -> Callable[[argparse.Namespace], int]:
    """A subcommand's `run`: opens a client on --server, runs `command`, closes the channel."""

    async def with_client(arguments: argparse.Namespace) -> int:
        async with SchedulerClient(
            arguments.server, tls=client_tls(arguments), api_key=api_key_for(arguments.server)
        ) as client:
            return await command(client, arguments)

    def run(arguments: argparse.Namespace) -> int:
        return asyncio.run(with_client(arguments))

    return run


def exit_code_of(job: job_pb2.Job) -> int:
    return 0 if job.state == job_pb2.JOB_STATE_SUCCEEDED else 1


async def _list(client: SchedulerClient, arguments: argparse.Namespace) -> int:
    if arguments.limit < 0:
        raise CliError("jobs list: --limit must be >= 0")
    limit: int = arguments.limit
    page_size = min(limit, _MAX_PAGE_SIZE) if limit else 0
    jobs: list[job_pb2.Job] = []
    async for job in client.list_jobs(
        filter=arguments.filter, page_size=page_size, view=VIEWS[arguments.view]
    ):
        jobs.append(job)
        if limit and len(jobs) >= limit:
            break
    if arguments.json:
        emit(to_json(scheduler_service_pb2.ListJobsResponse(jobs=jobs)))
    elif jobs:
        for line in job_list(jobs):
            emit(line)
    else:
        emit("no jobs" + (" match the filter" if arguments.filter else ""))
    return 0


async def _get(client: SchedulerClient, arguments: argparse.Namespace) -> int:
    job = await client.get_job(arguments.job_id, view=VIEWS[arguments.view])
    show_job(job, as_json=arguments.json)
    return 0


async def _cancel(client: SchedulerClient, arguments: argparse.Namespace) -> int:
    job = await client.cancel_job(arguments.job_id, reason=arguments.reason)
    if arguments.json:
        emit(to_json(job))
    else:
        emit(f"job {job.job_id} {job_state(job.state)}" + _cancel_note(job))
    return 0


def _cancel_note(job: job_pb2.Job) -> str:
    ended = job.state in (
        job_pb2.JOB_STATE_SUCCEEDED,
        job_pb2.JOB_STATE_FAILED,
        job_pb2.JOB_STATE_CANCELLED,
    )
    return "" if ended else " (cancel requested: running tasks are being stopped)"


async def _retry(client: SchedulerClient, arguments: argparse.Namespace) -> int:
    if (arguments.job_id is None) == (arguments.filter is None):
        raise CliError("jobs retry: give either JOB_ID or --filter")
    if arguments.filter is not None:
        return await _retry_matching(client, arguments)
    if arguments.dry_run:
        raise CliError("jobs retry: --dry-run needs --filter")
    if arguments.max_jobs is not None:
        raise CliError("jobs retry: --max-jobs needs --filter")
    job = await client.retry_job(arguments.job_id)
    if arguments.json:
        emit(to_json(job))
    else:
        emit(f"job {job.job_id} {job_state(job.state)} (retry {job.retry_count})")
    return 0


async def _retry_matching(client: SchedulerClient, arguments: argparse.Namespace) -> int:
    max_jobs: int = DEFAULT_RETRY_MAX_JOBS if arguments.max_jobs is None else arguments.max_jobs
    if max_jobs < 1:
        raise CliError("jobs retry: --max-jobs must be >= 1")
    response = await client.retry_jobs(
        filter=arguments.filter, max_jobs=max_jobs, dry_run=arguments.dry_run
    )
    if arguments.json:
        emit(to_json(response))
        return 0
    done = "would be re-driven" if arguments.dry_run else "re-driven"
    rows = [(job_id, done) for job_id in response.job_ids]
    rows += [
        (skipped.job_id, f"skipped: {reason_name(skipped.reason)}: {skipped.message}")
        for skipped in response.skipped_jobs
    ]
    if not rows:
        emit("no FAILED or CANCELLED job matches the filter")
        return 0
    for line in table(("JOB", "RESULT"), rows):
        emit(line)
    summary = f"{len(response.job_ids)} job{'' if len(response.job_ids) == 1 else 's'} {done}"
    if response.skipped_jobs:
        summary += f", {len(response.skipped_jobs)} skipped"
    if len(rows) >= max_jobs:
        summary += f"; --max-jobs {max_jobs} reached, more may match: run again"
    emit(summary)
    return 0


async def _watch(client: SchedulerClient, arguments: argparse.Namespace) -> int:
    job = await client.get_job(arguments.job_id)
    job = await follow(client, job, after_sequence=arguments.after_sequence, as_json=arguments.json)
    if not arguments.json:
        emit(render_outcome(job))
    return exit_code_of(job)


def show_job(job: job_pb2.Job, *, as_json: bool) -> None:
    if as_json:
        emit(to_json(job))
    else:
        for line in render_job(job):
            emit(line)
