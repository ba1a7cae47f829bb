"""`cpa submit`: create a job from text, an intent or a ToDo file, and optionally watch it run."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

from google.protobuf import struct_pb2

from cpa.scheduler.v1 import job_pb2
from cpa_client import CpaError, FieldViolation, SchedulerClient

from .common import CliError, add_json_option, add_pair_option, add_server_option, emit, pairs, warn
from .jobs_command import client_command, exit_code_of
from .live import follow
from .output import render_outcome, to_json
from .requests_file import RequestsFile, read_requests_file
from .todos_file import TodosFile, read_todos_file

# Most requests in one BatchScheduleJobs call (the API's limit); a longer file takes several.
BATCH_MAX = 1000
_REQUEST_INDEX = re.compile(r"^requests\[(\d+)\]")


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "submit",
        help="submit a job (text, intent or ToDo file)",
        description="Submit a job to the scheduler and print its id. The work is free TEXT "
        "(routed through the intent catalog), --intent NAME with --param KEY=VALUE, or "
        "--todos FILE.yaml: a YAML list of ToDos (id, action, description, params, depends_on, "
        "timeout_s, selector, text, required_capabilities, required_labels, retry_policy, "
        "inputs, credential_refs). "
        "With --watch, follow the job until it ends: exit 0 if it SUCCEEDED, 1 otherwise. "
        "--batch FILE.jsonl submits many jobs instead: one ScheduleJobRequest per line, in the "
        'API\'s JSON ({"requestId": "r-1", "spec": {"text": "..."}}), sent 1000 at a time, '
        "each call all or none; it prints one job id per line, in the file's order.",
    )
    parser.add_argument("text", nargs="?", metavar="TEXT", help="the request in plain words")
    parser.add_argument("--intent", metavar="NAME", help="name an intent instead of giving text")
    add_pair_option(parser, "--param", "an intent parameter (with --intent)")
    parser.add_argument("--todos", metavar="FILE.yaml", help="submit these ToDos as the plan")
    parser.add_argument(
        "--batch", metavar="FILE.jsonl", help="submit one job per line of this file"
    )
    add_pair_option(parser, "--context", "a request context value for the intent's templates")
    add_pair_option(parser, "--label", "a job label, e.g. team=ops")
    parser.add_argument(
        "--request-id",
        default="",
        metavar="ID",
        help="idempotency key: submitting again with the same id returns the same job",
    )
    parser.add_argument(
        "--watch", action="store_true", help="stream the job's progress until it ends"
    )
    add_json_option(
        parser,
        "the ScheduleJobResponse (with --watch: it and every event, one per line; with "
        "--batch: one per request and line)",
    )
    add_server_option(parser)
    parser.set_defaults(run=client_command(_submit))


def build_spec(arguments: argparse.Namespace) -> tuple[job_pb2.JobSpec, TodosFile | None]:
    """The JobSpec the options describe (and the ToDo file it came from, if any)."""
    sources = [s for s in (arguments.text, arguments.intent, arguments.todos) if s is not None]
    if len(sources) != 1:
        raise CliError(
            "submit: give exactly one of TEXT, --intent NAME, --todos FILE or --batch FILE"
        )
    if arguments.param and arguments.intent is None:
        raise CliError("submit: --param goes with --intent")
    spec = job_pb2.JobSpec(labels=pairs(arguments.label, "--label"))
    if arguments.context:
        spec.context.update(pairs(arguments.context, "--context"))
    todos_file: TodosFile | None = None
    if arguments.text is not None:
        spec.text = arguments.text
    elif arguments.intent is not None:
        parameters = struct_pb2.Struct()
        parameters.update(pairs(arguments.param, "--param"))
        spec.intent.CopyFrom(job_pb2.IntentInvocation(name=arguments.intent, parameters=parameters))
    else:
        todos_file = read_todos_file(arguments.todos)
        spec.todos.todos.extend(todos_file.todos)
    return spec, todos_file


def with_locations(error: CpaError, location_of: Callable[[str], str | None]) -> CpaError:
    """The scheduler's error, each bad field followed by where the user's file wrote it."""

    def located(field: str) -> str:
        where = location_of(field)
        return f"{field} ({where})" if where else field

    violations = error.field_violations
    field = error.metadata.get("field", "")
    if not violations and location_of(field):
        # Not bad input (e.g. ALREADY_EXISTS for a request id): the field is in ErrorInfo only.
        violations = (FieldViolation(field, error.message),)
    return CpaError(
        code=error.code,
        message=error.message,
        reason=error.reason,
        metadata=error.metadata,
        field_violations=tuple(FieldViolation(located(v.field), v.description) for v in violations),
    )


async def _submit(client: SchedulerClient, arguments: argparse.Namespace) -> int:
    if arguments.batch is not None:
        return await _submit_batch(client, arguments)
    spec, todos_file = build_spec(arguments)
    try:
        response = await client.schedule_job(spec, request_id=arguments.request_id)
    except CpaError as error:
        if todos_file is None:
            raise
        raise with_locations(error, todos_file.location_of) from None
    job = response.job
    if arguments.json:
        emit(to_json(response, compact=arguments.watch))
    else:
        emit(job.job_id)
        if not response.created:
            warn(f"cpa submit: request id {arguments.request_id!r} was used before: same job")
    if not arguments.watch:
        return 0
    job = await follow(client, job, as_json=arguments.json)
    if not arguments.json:
        emit(render_outcome(job))
    return exit_code_of(job)


async def _submit_batch(client: SchedulerClient, arguments: argparse.Namespace) -> int:
    others = {
        "TEXT": arguments.text is not None,
        "--intent": arguments.intent is not None,
        "--todos": arguments.todos is not None,
        "--param": bool(arguments.param),
        "--context": bool(arguments.context),
        "--label": bool(arguments.label),
        "--request-id": bool(arguments.request_id),
        "--watch": arguments.watch,
    }
    if given := [option for option, present in others.items() if present]:
        raise CliError(f"submit: --batch takes everything from its file, not {', '.join(given)}")
    batch = read_requests_file(arguments.batch)
    for start in range(0, len(batch.requests), BATCH_MAX):
        try:
            responses = await client.batch_schedule_jobs(batch.requests[start : start + BATCH_MAX])
        except CpaError as error:
            if start:
                warn(
                    f"cpa submit: the jobs of the lines before line {batch.lines[start]} were "
                    "created (their ids are above); none from that line on"
                )
            raise with_locations(error, _line_of(batch, start)) from None
        for offset, response in enumerate(responses):
            emit(to_json(response, compact=True) if arguments.json else response.job.job_id)
            if not response.created:
                line = batch.lines[start + offset]
                warn(f"cpa submit: {batch.path}:{line}: request id used before: same job")
    return 0


def _line_of(batch: RequestsFile, start: int) -> Callable[[str], str | None]:
    """Where a field of a call's requests (`requests[3].spec.text`) came from in the file."""

    def location_of(field: str) -> str | None:
        match = _REQUEST_INDEX.match(field)
        if match is None or start + int(match[1]) >= len(batch.lines):
            return None
        return f"{batch.path}:{batch.lines[start + int(match[1])]}"

    return location_of
