"""An agent's TaskError.details reach the caller: kept with the attempt (GetJob, the events)
within CPA_TASK_ERROR_DETAILS_MAX_BYTES, replaced by {"details_dropped": why} past it, and the
attempt fails as reported either way. Real scheduler, real agent, real gRPC."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import json_format

from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient
from cpa_scheduler.settings import Settings

from .conftest import HEARTBEAT_S, LEASE_S, Agents, collect_events, todo, todos_spec

# Small, so that an INVALID_PARAMS error listing many problems passes it.
DETAILS_MAX_BYTES = 300


@pytest.fixture
def scheduler_settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        lease_duration_s=LEASE_S,
        heartbeat_interval_s=HEARTBEAT_S,
        task_error_details_max_bytes=DETAILS_MAX_BYTES,
    )


async def _failed_error(client: SchedulerClient, spec: job_pb2.JobSpec) -> dict[str, object]:
    job_id = (await client.schedule_job(spec)).job.job_id
    events = await collect_events(client, job_id)
    job = await client.get_job(job_id)
    assert job.state == job_pb2.JOB_STATE_FAILED
    (task,) = job.tasks
    (attempt,) = task.attempts
    # The task's error, its attempt's and its event's carry the same details.
    assert attempt.error.details == task.error.details
    failed = [
        e.task_state_changed
        for e in events
        if e.WhichOneof("kind") == "task_state_changed"
        and e.task_state_changed.to_state == job_pb2.TASK_STATE_FAILED
    ]
    assert [f.error.details for f in failed] == [task.error.details]
    assert task.error.code == "INVALID_PARAMS"
    return json_format.MessageToDict(task.error.details)


async def test_the_details_of_an_agents_error_are_kept_and_shown(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1")
    details = await _failed_error(client, todos_spec(todo("t", "fail", params={"code": ""})))
    # The runner says which field is at fault (ERROR_REASON_INVALID_PARAMS).
    assert details["field"] == "params.code"
    assert isinstance(details["errors"], list)
    assert details["errors"]


async def test_details_over_the_bound_are_dropped_with_a_marker_and_the_failure_kept(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1")
    # Every field wrong, each with a long value in its message: details far over 300 bytes.
    params = {"code": "", "message": ["x" * 200], "retryable": "y" * 200, "until_attempt": "z"}
    details = await _failed_error(client, todos_spec(todo("t", "fail", params=params)))
    assert list(details) == ["details_dropped"]
    assert "CPA_TASK_ERROR_DETAILS_MAX_BYTES" in str(details["details_dropped"])
