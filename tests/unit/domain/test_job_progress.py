"""Job progress costs O(its effect): a transition never walks every task of the job.

The job's task mapping is swapped, once the job exists, for one that refuses to be iterated: any
transition that scans all tasks (promotion, "anything active?", the end-of-job check, skipping)
fails the test. Counting rather than timing, so the proof does not depend on the machine.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import pytest

from cpa_scheduler.domain import (
    Job,
    JobOptions,
    JobSource,
    JobState,
    SourceKind,
    TaskError,
    TaskGraph,
    TaskState,
    ToDo,
)

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
LEASE = NOW + timedelta(seconds=30)
SIZE = 2_000


class NoScan(dict[str, Any]):
    """The job's tasks by id, whose lookups work but whose whole-mapping walks fail."""

    def _scan(self, *_: object) -> NoReturn:
        raise AssertionError("a transition walked every task of the job")

    __iter__ = values = items = keys = _scan


def make_job(todos: list[ToDo], *, max_parallelism: int = 4) -> Job:
    return Job.create(
        job_id="job-1",
        tenant="tenant-a",
        graph=TaskGraph.from_todos(todos),
        source=JobSource(kind=SourceKind.TODOS),
        options=JobOptions(max_parallelism=max_parallelism),
        now=NOW,
    )


def chain(size: int) -> list[ToDo]:
    return [
        ToDo(id=f"t{i}", action="click", depends_on=(f"t{i - 1}",) if i else ())
        for i in range(size)
    ]


def run(job: Job, task_id: str) -> None:
    job.assign(task_id, attempt=1, agent_id="agent", lease_until=LEASE, now=NOW)


def test_a_chain_runs_to_its_end_without_any_scan_of_its_tasks() -> None:
    job = make_job(chain(SIZE))
    job.take_changes()
    job.tasks = NoScan(job.tasks)
    for i in range(SIZE):
        run(job, f"t{i}")
        job.succeed(f"t{i}", attempt=1, outputs={}, now=NOW)
        changes = job.take_changes()
        # Exactly the finished task and the one dependent it made ready were written.
        expected = {f"t{i}"} if i == SIZE - 1 else {f"t{i}", f"t{i + 1}"}
        assert changes.dirty_tasks == expected
        assert changes.queued == ([] if i == SIZE - 1 else [f"t{i + 1}"])
    assert job.state is JobState.SUCCEEDED


def test_a_fan_out_fan_in_promotes_in_insertion_order_within_the_budget_without_a_scan() -> None:
    todos = [ToDo(id="root", action="click")]
    todos += [ToDo(id=f"w{i}", action="click", depends_on=("root",)) for i in range(SIZE)]
    todos.append(ToDo(id="sink", action="click", depends_on=tuple(f"w{i}" for i in range(SIZE))))
    job = make_job(todos, max_parallelism=3)
    job.tasks = NoScan(job.tasks)
    run(job, "root")
    job.succeed("root", attempt=1, outputs={}, now=NOW)
    assert job.take_changes().queued == ["w0", "w1", "w2"]
    for i in range(SIZE):
        run(job, f"w{i}")
        job.succeed(f"w{i}", attempt=1, outputs={}, now=NOW)
        queued = job.take_changes().queued
        nxt = i + 3
        assert queued == ([f"w{nxt}"] if nxt < SIZE else ["sink"] if i == SIZE - 1 else [])
    run(job, "sink")
    job.succeed("sink", attempt=1, outputs={}, now=NOW)
    assert job.state is JobState.SUCCEEDED


def test_a_failure_before_a_fan_in_skips_its_downstream_once() -> None:
    todos = [ToDo(id=f"w{i}", action="click") for i in range(4)]
    todos.append(ToDo(id="sink", action="click", depends_on=tuple(f"w{i}" for i in range(4))))
    todos += [ToDo(id=f"after{i}", action="click", depends_on=("sink",)) for i in range(3)]
    job = make_job(todos, max_parallelism=4)
    job.take_changes()
    error = TaskError(code="BROKEN", message="no")
    run(job, "w0")
    job.fail("w0", attempt=1, error=error, now=NOW)
    first = job.take_changes().dirty_tasks
    assert first == {"w0", "sink", "after0", "after1", "after2"}
    job.tasks = NoScan(job.tasks)
    run(job, "w1")
    job.fail("w1", attempt=1, error=error, now=NOW)
    # The fan-in and what follows it are SKIPPED already: nothing of them is touched again.
    assert job.take_changes().dirty_tasks == {"w1"}
    assert job.tasks["after2"].state is TaskState.SKIPPED


@pytest.mark.parametrize("done", [0, 1, 7, SIZE - 1])
def test_a_job_loaded_mid_chain_rebuilds_its_progress_and_continues(done: int) -> None:
    job = make_job(chain(SIZE))
    for i in range(done):
        run(job, f"t{i}")
        job.succeed(f"t{i}", attempt=1, outputs={}, now=NOW)
    job.take_changes()
    # As a store loads it: the same rows, a fresh aggregate without the in-memory index.
    loaded = dataclasses.replace(job, _graph=None, _index=None)
    loaded.tasks = dict(job.tasks)
    run(loaded, f"t{done}")
    loaded.succeed(f"t{done}", attempt=1, outputs={}, now=NOW)
    nxt = done + 1
    assert loaded.take_changes().queued == ([f"t{nxt}"] if nxt < SIZE else [])
    assert loaded.state is (JobState.SUCCEEDED if nxt == SIZE else JobState.RUNNING)
