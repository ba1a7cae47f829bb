"""After the hostile traffic: did the normal work run as if nothing happened, and is the store
sound? Each check returns the problems it found (empty: none)."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections import defaultdict
from typing import Any

import grpc
import psycopg
from google.protobuf import text_format

from cpa.scheduler.v1 import job_pb2, scheduler_service_pb2_grpc
from cpa.scheduler.v1 import scheduler_service_pb2 as svc
from tests.fixtures.history import ONCE, history_problems

from .agent_stream import FORGED
from .arena import (
    CALL_TIMEOUT_S,
    NORMAL_AGENT_ID,
    NORMAL_TASK_ID,
    NORMAL_WAIT_S,
    Arena,
    tenant_metadata,
)
from .calls import describe_error

TERMINAL_JOB = {"SUCCEEDED", "FAILED", "CANCELLED"}
TASK_STATES = {
    job_pb2.TaskState.Name(v).removeprefix("TASK_STATE_") for v in job_pb2.TaskState.values()
} - {"UNSPECIFIED"}
JOB_STATES = {
    job_pb2.JobState.Name(v).removeprefix("JOB_STATE_") for v in job_pb2.JobState.values()
} - {"UNSPECIFIED"}
UNFINISHED_TASK = {"PENDING", "QUEUED", "RUNNING"}
EXAMPLES = 3


def normal_work_problems(arena: Arena) -> list[str]:
    """The normal jobs each ran once, on the real agent, with its outputs, without a lost
    attempt; the agent kept its one session; nothing forged reached them."""
    problems = list(arena.normal.errors)
    runs = arena.normal.runs
    if not runs:
        problems.append("no normal job finished while the hostile traffic ran")
    for run in runs:
        job = run.job
        found = history_problems(job, run.events, attempts={NORMAL_TASK_ID: ONCE})
        for task in job.tasks:
            outputs = dict(task.outputs)
            if task.state == job_pb2.TASK_STATE_SUCCEEDED and outputs != {
                "waited_s": NORMAL_WAIT_S
            }:
                shown = text_format.MessageToString(task.outputs, as_one_line=True)[:120]
                found.append(f"outputs {{{shown}}} are not the agent's")
            found += [
                f"attempt {a.number} ran on {a.agent_id!r}, not the normal agent"
                for a in task.attempts
                if a.agent_id != NORMAL_AGENT_ID
            ]
        forged = [
            e.sequence
            for e in run.events
            if e.WhichOneof("kind") == "task_progress" and FORGED in e.task_progress.message
        ]
        if forged:
            found.append(f"forged progress recorded as events {forged}")
        problems += [f"normal job {job.job_id}: {p}" for p in found]
    problems = collapsed(problems)
    sessions = arena.agent_sessions()
    if len(sessions) != 1:
        problems.append(
            f"the normal agent was welcomed {len(sessions)} times (its stream was ended by "
            f"someone else's traffic):\n      "
            + "\n      ".join(s[-160:] for s in sessions[:EXAMPLES])
        )
    return problems


def collapsed(problems: list[str], *, keep: int = EXAMPLES) -> list[str]:
    """At most `keep` problems of one kind (same text once ids are taken out), then a count."""
    kinds: defaultdict[str, list[str]] = defaultdict(list)
    for problem in problems:
        kinds[re.sub(r"\b[0-9a-f]{32}\b|\b\d+\b", "#", problem)].append(problem)
    out = []
    for same in kinds.values():
        out += same[:keep]
        if len(same) > keep:
            out.append(f"... and {len(same) - keep} more like the last")
    return out


def server_log_problems(arena: Arena) -> list[str]:
    """Bad input is answered and logged in one line, never with an ERROR traceback."""
    lines = arena.server_log().splitlines()
    errors = [line for line in lines if re.search(r" (ERROR|CRITICAL) ", line)]
    tracebacks = sum(1 for line in lines if line.startswith("Traceback"))
    problems = []
    if errors or tracebacks:
        # One line per kind: without the time stamp and the reference of each error.
        distinct = sorted({re.sub(r"\(ref \w+\)|^\S+ \S+ ", "", line)[:200] for line in errors})
        problems.append(
            f"the server logged {len(errors)} ERROR lines and {tracebacks} tracebacks, "
            "e.g.:\n      " + "\n      ".join(distinct[:12])
        )
    expired = [line for line in lines if "lease of" in line and "expired" in line]
    normal_ids = {run.job.job_id for run in arena.normal.runs}
    lost = [line for line in expired if any(job_id in line for job_id in normal_ids)]
    if lost:
        problems.append(f"leases of normal jobs expired: {lost[:EXAMPLES]}")
    return problems


_JOBS = "SELECT tenant, job_id, state, last_event_sequence FROM jobs"
_EVENTS = "SELECT job_id, sequence FROM events ORDER BY job_id, sequence"
_TASKS = "SELECT job_id, task_id, state FROM tasks"


def _rows(arena: Arena, query: str) -> list[tuple[Any, ...]]:
    """The rows of `query` in the arena's store: its PostgreSQL database, or the SQLite file
    (read-only)."""
    if arena.database_url:
        with psycopg.connect(arena.database_url) as pg:
            return list(pg.execute(query).fetchall())
    path = arena.data_dir / "cpa.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
        return db.execute(query).fetchall()


def store_problems(arena: Arena) -> list[str]:
    """Every job's events are numbered 1..N without gap (N its last_event_sequence), every
    state is legal, an ended job has no unfinished task, and every job reads back through the
    API with the default client: GetJob, every ListJobs page of its tenant, and (for ended jobs
    never re-driven) its whole history as the fault suite checks it."""
    problems: list[str] = []
    jobs = _rows(arena, _JOBS)
    sequences: defaultdict[str, list[int]] = defaultdict(list)
    for job_id, sequence in _rows(arena, _EVENTS):
        sequences[job_id].append(sequence)
    tasks: defaultdict[str, list[tuple[str, str]]] = defaultdict(list)
    for job_id, task_id, state in _rows(arena, _TASKS):
        tasks[job_id].append((task_id, state))
    by_tenant: defaultdict[str, set[str]] = defaultdict(set)
    for tenant, job_id, state, last in jobs:
        by_tenant[tenant].add(job_id)
        found = []
        if sequences[job_id] != list(range(1, len(sequences[job_id]) + 1)):
            found.append(f"events numbered {sequences[job_id][:20]}, not 1..N")
        if len(sequences[job_id]) != last:
            found.append(f"{len(sequences[job_id])} events, last_event_sequence {last}")
        if str(state).upper() not in JOB_STATES:
            found.append(f"job state {state!r} is not a state")
        for task_id, task_state in tasks[job_id]:
            if str(task_state).upper() not in TASK_STATES:
                found.append(f"task {task_id[:40]!r} state {task_state!r} is not a state")
            elif str(state).upper() in TERMINAL_JOB and str(task_state).upper() in UNFINISHED_TASK:
                found.append(f"job {state} but task {task_id[:40]!r} is {task_state}")
        problems += [f"store: job {job_id} (tenant {tenant[:40]!r}): {p}" for p in found]
    problems += _api_problems(arena, by_tenant)
    return collapsed(problems)


def _api_problems(arena: Arena, by_tenant: dict[str, set[str]]) -> list[str]:
    stub = arena.scheduler  # the default channel: default limits, as any client has them
    problems: list[str] = []
    for tenant, job_ids in sorted(by_tenant.items()):
        metadata = tenant_metadata(tenant)
        where = f"tenant {tenant[:40]!r}"
        listed: set[str] = set()
        token = ""
        try:
            while True:
                page = stub.ListJobs(
                    svc.ListJobsRequest(page_size=100, page_token=token),
                    metadata=metadata,
                    timeout=CALL_TIMEOUT_S,
                )
                listed |= {job.job_id for job in page.jobs}
                token = page.next_page_token
                if not token:
                    break
        except grpc.RpcError as error:
            problems.append(f"ListJobs of {where} fails: {describe_error(error)}")
        else:
            if listed != job_ids:
                problems.append(
                    f"ListJobs of {where} lists {len(listed)} jobs, the store holds {len(job_ids)}"
                )
        for job_id in sorted(job_ids):
            problems += [f"{where}: {p}" for p in _job_problems(stub, metadata, job_id)]
    return problems


def _job_problems(
    stub: scheduler_service_pb2_grpc.SchedulerServiceStub,
    metadata: tuple[tuple[str, str], ...],
    job_id: str,
) -> list[str]:
    try:
        job = stub.GetJob(
            svc.GetJobRequest(job_id=job_id), metadata=metadata, timeout=CALL_TIMEOUT_S
        ).job
    except grpc.RpcError as error:
        return [f"GetJob {job_id} fails: {describe_error(error)}"]
    if job.state not in (
        job_pb2.JOB_STATE_SUCCEEDED,
        job_pb2.JOB_STATE_FAILED,
        job_pb2.JOB_STATE_CANCELLED,
    ):
        return []
    try:
        events = [
            r.event
            for r in stub.WatchJob(
                svc.WatchJobRequest(job_id=job_id), metadata=metadata, timeout=CALL_TIMEOUT_S
            )
            if r.HasField("event")  # not a heartbeat
        ]
    except grpc.RpcError as error:
        return [f"WatchJob {job_id} (ended) fails: {describe_error(error)}"]
    if job.retry_count:
        return []  # a re-driven job has one terminal event per run: only the numbering applies
    return [f"job {job_id}: {p}" for p in history_problems(job, events, expected_state=job.state)]
