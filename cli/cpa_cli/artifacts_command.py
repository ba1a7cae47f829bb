"""`cpa artifacts list JOB_ID` and `cpa artifacts get JOB_ID NAME -o FILE`.

A name is unique within one attempt of one task, not within a job: two tasks may both store
"page.png". NAME may therefore be qualified as TASK/NAME (an artifact name never contains '/');
an unqualified NAME that several tasks stored is refused, naming them. Within one task the
latest attempt's artifact of that name is taken (the succeeded one, when the task succeeded);
`--attempt N` takes attempt N's instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cpa.common.v1 import artifact_pb2
from cpa.scheduler.v1 import scheduler_service_pb2
from cpa_client import ArtifactCheckError, SchedulerClient

from .common import CliError, add_json_option, add_server_option, emit
from .jobs_command import client_command
from .output import size_text, table, to_json


def register(commands: Any) -> None:
    artifacts: argparse.ArgumentParser = commands.add_parser(
        "artifacts",
        help="list or download the files a job's tasks stored",
        description="List or download artifacts (screenshots, downloads) of a job.",
    )
    actions = artifacts.add_subparsers(dest="artifacts_command", required=True, metavar="ACTION")

    listing: argparse.ArgumentParser = actions.add_parser(
        "list",
        help="list a job's artifacts",
        description="List the artifacts of a job's tasks, failed attempts' included.",
    )
    listing.add_argument("job_id", metavar="JOB_ID")
    listing.add_argument("--task", default="", metavar="TASK", help="only this task's")
    add_json_option(listing, "a ListArtifactsResponse")
    add_server_option(listing)
    listing.set_defaults(run=client_command(_list))

    get: argparse.ArgumentParser = actions.add_parser(
        "get",
        help="download one artifact, checked by sha256",
        description="Download an artifact to FILE (default: its name, in the current "
        "directory); its size and sha256 are checked, and nothing is written when they do not "
        "match. NAME may be TASK/NAME when several tasks stored that name.",
    )
    get.add_argument("job_id", metavar="JOB_ID")
    get.add_argument("name", metavar="NAME", help="artifact name, or TASK/NAME")
    get.add_argument("-o", "--output", metavar="FILE", help="where to write it")
    get.add_argument(
        "--attempt", type=int, metavar="N", help="the artifact of attempt N (default: latest)"
    )
    add_server_option(get)
    get.set_defaults(run=client_command(_get))


async def _list(client: SchedulerClient, arguments: argparse.Namespace) -> int:
    found = await client.list_artifacts(arguments.job_id, task_id=arguments.task)
    if arguments.json:
        emit(to_json(scheduler_service_pb2.ListArtifactsResponse(artifacts=found)))
        return 0
    if not found:
        emit(f"job {arguments.job_id} has no artifacts")
        return 0
    rows = [
        [a.task_id, str(a.attempt), a.name, a.media_type, size_text(a.size_bytes), a.sha256[:12]]
        for a in found
    ]
    for line in table(["TASK", "ATTEMPT", "NAME", "TYPE", "SIZE", "SHA256"], rows):
        emit(line)
    return 0


def choose(
    artifacts: list[artifact_pb2.Artifact], name: str, *, attempt: int | None = None
) -> artifact_pb2.Artifact:
    """The artifact NAME (or TASK/NAME) names, as the module docstring says."""
    task_id, _, bare = name.rpartition("/")
    matches = [
        a
        for a in artifacts
        if a.name == bare
        and (not task_id or a.task_id == task_id)
        and (attempt is None or a.attempt == attempt)
    ]
    if not matches:
        where = f" of task {task_id!r}" if task_id else ""
        at = f" in attempt {attempt}" if attempt is not None else ""
        names = sorted({f"{a.task_id}/{a.name}" for a in artifacts})
        listed = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") or "none"
        raise CliError(f"no artifact {bare!r}{where}{at} (the job has: {listed})")
    tasks = sorted({a.task_id for a in matches})
    if len(tasks) > 1:
        raise CliError(
            f"artifact {bare!r} was stored by tasks {', '.join(tasks)}; name one as TASK/NAME "
            f"(e.g. {tasks[0]}/{bare})"
        )
    return max(matches, key=lambda a: a.attempt)


async def _get(client: SchedulerClient, arguments: argparse.Namespace) -> int:
    artifacts = await client.list_artifacts(arguments.job_id)
    chosen = choose(artifacts, arguments.name, attempt=arguments.attempt)
    target = Path(arguments.output or chosen.name)
    try:
        stored = await client.download_artifact(arguments.job_id, chosen.artifact_id, target)
    except ArtifactCheckError as error:
        raise CliError(f"artifact {chosen.name!r} not written: {error}") from None
    except OSError as error:
        raise CliError(f"cannot write {target}: {error.strerror or error}") from None
    emit(
        f"{target}: {stored.name} from task {stored.task_id} attempt {stored.attempt}, "
        f"{stored.size_bytes} bytes, sha256 {stored.sha256}"
    )
    return 0
