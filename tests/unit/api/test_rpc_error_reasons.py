"""Every ErrorReason an RPC's handler can raise is named in that RPC's proto comment (or in its
service's comment, which lists what every method of the service can return).

The reasons are derived from the server's source (reason_flow.py), so a new `raise` in a handler
or anything it calls fails this test until the contract says so; the comments are read from
deploy/api.binpb, as buf built them from proto/."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from .reason_flow import Package

DESCRIPTOR_SET = Path(__file__).resolve().parents[3] / "deploy" / "api.binpb"
SERVICERS = {
    "cpa.scheduler.v1.SchedulerService": "SchedulerServicer",
    "cpa.executor.v1.ExecutorService": "ExecutorServicer",
    "cpa.admin.v1.AdminService": "AdminServicer",
}
# Calls the walk does not follow, each because what the callee raises cannot happen on that
# path. Every entry must say why; test_pruned_calls_exist keeps the list from going stale.
PRUNED_CALLS: dict[tuple[str, str], str] = {
    ("Orchestrator._place_at_once", "Job.assign"): (
        "the tasks placed are those of jobs created in the same transaction, QUEUED and at "
        "their first attempt: the fences of assign (STALE_ATTEMPT, TASK_NOT_FOUND, an illegal "
        "move) cannot fail there"
    ),
    ("Job.create", "JobCore._promote_ready"): (
        "a new job's ready tasks go from PENDING to QUEUED, a legal move: no ILLEGAL_TRANSITION"
    ),
    ("PostgresStore._owner", "PostgresStore.get_job"): (
        "the job holding a request id is loaded by the id just read, and jobs are never "
        "deleted: no JOB_NOT_FOUND"
    ),
    ("SqliteStore._create_job", "SqliteStore._load"): (
        "the same in the SQLite store: the job holding the request id was just read"
    ),
    ("Artifacts.open", "Artifacts.list"): (
        "open lists every task's artifacts (no task_id), so list's TASK_NOT_FOUND cannot "
        "happen; its JOB_NOT_FOUND is in both DownloadArtifact comments"
    ),
    ("OpenAIProvider._chat", "_Parser.parse"): (
        "raw.parse() is the openai SDK's response parser, not the filter parser of that name"
    ),
}
_REASON = re.compile(r"\b[A-Z][A-Z0-9_]{3,}\b")


@cache
def _package() -> Package:
    return Package()


def _comments() -> dict[tuple[str, str], str]:
    """(service, method) -> the method's leading comment; (service, "") -> the service's."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    found: dict[tuple[str, str], str] = {}
    for file in files.file:
        located = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
        for s, service in enumerate(file.service):
            name = f"{file.package}.{service.name}"
            found[(name, "")] = located.get((6, s), "")
            for m, method in enumerate(service.method):
                found[(name, method.name)] = located.get((6, s, 2, m), "")
    return found


def _rpcs() -> list[tuple[str, str]]:
    return sorted((s, m) for s, m in _comments() if m and s in SERVICERS)


def test_every_rpc_of_the_three_services_is_checked() -> None:
    assert {s for s, _ in _rpcs()} == set(SERVICERS)
    assert len(_rpcs()) >= 22


@pytest.mark.parametrize(("service", "method"), _rpcs(), ids=lambda v: v.rsplit(".", 1)[-1])
def test_every_reason_an_rpc_can_raise_is_in_its_comment(service: str, method: str) -> None:
    comments = _comments()
    documented = set(_REASON.findall(comments[(service, method)] + comments[(service, "")]))
    raised = _package().reasons_of(SERVICERS[service], method, pruned=PRUNED_CALLS)
    missing = {r: " > ".join(path) for r, path in raised.items() if r not in documented}
    assert not missing, f"{method}: reasons raised but not in its proto comment: {missing}"


def test_the_walk_finds_what_a_handler_is_known_to_raise() -> None:
    """The derivation is not vacuous: CancelJob's refusals, each from a different layer
    (handler, orchestrator, store, domain state machine)."""
    raised = _package().reasons_of("SchedulerServicer", "CancelJob", pruned=PRUNED_CALLS)
    assert {"MISSING_FIELD", "PAYLOAD_TOO_LARGE", "JOB_NOT_FOUND", "ILLEGAL_TRANSITION"} <= set(
        raised
    )
    upload = _package().reasons_of("ExecutorServicer", "UploadArtifact", pruned=PRUNED_CALLS)
    assert {"ARTIFACT_DIGEST_MISMATCH", "STALE_ATTEMPT", "TOO_MANY_ARTIFACTS"} <= set(upload)


def test_pruned_calls_exist() -> None:
    for caller, callee in PRUNED_CALLS:
        assert _package().has_call(caller, callee), f"{caller} no longer calls {callee}"
