"""The Store contract, run against every backend (SQLite and PostgreSQL) with the real aggregate.

Jobs are created and changed only through Job methods, as the orchestrator does; every test
checks what a later read returns, so a backend that stores something else fails here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cpa_scheduler.domain import (
    AttemptNotHeld,
    AttemptRef,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    Job,
    JobChanges,
    JobFilter,
    JobOptions,
    JobSource,
    JobState,
    JobStateChanged,
    NotFound,
    OutputRef,
    PagePosition,
    Reason,
    RequestIdReused,
    RetryPolicy,
    SourceKind,
    StaleAttempt,
    TaskError,
    TaskGraph,
    TaskState,
    ToDo,
)
from cpa_scheduler.storage import Store, StoredMessage

from .conftest import OpenStore

NOW = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
LEASE = NOW + timedelta(seconds=30)
TENANT = "tenant-a"
OTHER = "tenant-b"
NO_RETRY = RetryPolicy(max_attempts=1, initial_backoff_s=1.0, multiplier=2.0, max_backoff_s=1.0)
RETRY_LATER = RetryPolicy(
    max_attempts=5, initial_backoff_s=10.0, multiplier=2.0, max_backoff_s=60.0, jitter=0.0
)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def todo(
    task_id: str,
    *depends_on: str,
    retry_policy: RetryPolicy | None = None,
    inputs: dict[str, OutputRef] | None = None,
) -> ToDo:
    return ToDo(
        id=task_id,
        action="type",
        text=f"text of {task_id}: ünïcode ✓",
        params={"field": task_id, "n": 1.5},
        depends_on=depends_on,
        retry_policy=retry_policy,
        required_capabilities=frozenset({"browser"}),
        required_labels={"site": "eu"},
        timeout_s=30.0,
        schedule_to_start_s=120.0,
        inputs=inputs or {},
        # References only; both stores must keep them (Assignment.credential_refs).
        credential_refs={"portal": "env:PORTAL_PASSWORD", "mail": "vault://mail/ops"},
    )


def new_job(
    job_id: str,
    *todos: ToDo,
    tenant: str = TENANT,
    now: datetime = NOW,
    intent: str = "demo",
    labels: dict[str, str] | None = None,
    request_id: str = "",
    fingerprint: str = "fp-1",
    conversation_id: str = "",
) -> Job:
    return Job.create(
        job_id=job_id,
        tenant=tenant,
        graph=TaskGraph.from_todos(todos or (todo("a"),)),
        source=JobSource(kind=SourceKind.INTENT, intent=intent, parameters={"p": [1, "two"]}),
        options=JobOptions(
            max_parallelism=4,
            context={"user": "ops"},
            labels=labels or {},
            deadline=at(3600),
            default_retry_policy=NO_RETRY,
            callback_url="https://example.invalid/hook",
        ),
        now=now,
        intent=intent,
        request_id=request_id,
        request_fingerprint=fingerprint,
        conversation_id=conversation_id,
    )


async def create_one(store: Store, job: Job) -> tuple[Job, JobChanges | None]:
    [result] = await store.create_jobs([job])
    return result


async def create(store: Store, job: Job) -> Job:
    stored, changes = await create_one(store, job)
    assert changes is not None, "expected a new job"
    return stored


def assigning(
    task_id: str, attempt: int = 1, *, agent_id: str = "agent-1", lease_until: datetime = LEASE
) -> Callable[[Job], Any]:
    return lambda job: job.assign(
        task_id, attempt=attempt, agent_id=agent_id, lease_until=lease_until, now=NOW
    )


def ids(jobs: list[Job]) -> list[str]:
    return [job.job_id for job in jobs]


# -- create and read -------------------------------------------------------------------------


async def test_created_job_reads_back_equal_with_its_events(store: Store) -> None:
    job = new_job("job-1", todo("a"), todo("b", "a"), todo("c"), labels={"team": "ops"})
    stored, changes = await create_one(store, job)

    assert changes is not None
    assert stored is job
    assert [e.sequence for e in changes.events] == list(range(1, job.last_event_sequence + 1))
    assert changes.queued == ["a", "c"]
    read = await store.get_job(TENANT, "job-1")
    assert read == job
    assert read.tasks["b"].todo == job.tasks["b"].todo
    assert read.create_time.utcoffset() == timedelta(0)
    events = await store.list_events(TENANT, "job-1", after_sequence=0, limit=100)
    assert events == changes.events


async def test_same_request_id_and_fingerprint_returns_the_existing_job(store: Store) -> None:
    first = await create(store, new_job("job-1", request_id="req-1"))

    again, changes = await create_one(store, new_job("job-2", request_id="req-1", now=at(5)))

    assert changes is None
    assert again == first
    with pytest.raises(NotFound):
        await store.get_job(TENANT, "job-2")


async def test_request_id_reused_for_another_request_is_refused(store: Store) -> None:
    await create(store, new_job("job-1", request_id="req-1", fingerprint="fp-1"))

    with pytest.raises(InvalidArgument) as raised:
        await create_one(store, new_job("job-2", request_id="req-1", fingerprint="fp-2"))

    assert raised.value.reason is Reason.REQUEST_ID_REUSED
    assert raised.value.field == "request_id"
    with pytest.raises(NotFound):
        await store.get_job(TENANT, "job-2")


async def test_request_ids_are_per_tenant_and_empty_ones_never_collide(store: Store) -> None:
    await create(store, new_job("job-1", request_id="req-1"))
    await create(store, new_job("job-2", request_id="req-1", tenant=OTHER))
    await create(store, new_job("job-3"))
    await create(store, new_job("job-4"))

    assert (await store.get_job(OTHER, "job-2")).tenant == OTHER
    assert (await store.get_job(TENANT, "job-4")).request_id == ""


async def test_duplicate_creates_in_one_batch_make_one_job(store: Store) -> None:
    results = await asyncio.gather(
        create_one(store, new_job("job-1", request_id="req-1")),
        create_one(store, new_job("job-2", request_id="req-1")),
    )

    assert [changes is None for _, changes in results] == [False, True]
    assert {job.job_id for job, _ in results} == {"job-1"}


async def test_jobs_created_together_are_all_stored_in_order(store: Store) -> None:
    jobs = [new_job(f"job-{n}", request_id=f"req-{n}" if n % 2 else "") for n in range(5)]

    results = await store.create_jobs(jobs)

    assert [(job.job_id, changes is not None) for job, changes in results] == [
        (f"job-{n}", True) for n in range(5)
    ]
    for job in jobs:
        assert (await store.get_job(TENANT, job.job_id)).request_id == job.request_id
        events = await store.list_events(TENANT, job.job_id, after_sequence=0, limit=100)
        assert len(events) == job.last_event_sequence


async def test_jobs_created_together_find_the_earlier_job_of_a_repeated_request(
    store: Store,
) -> None:
    first = await create(store, new_job("job-1", request_id="req-1"))

    results = await store.create_jobs(
        [new_job("job-2", request_id="req-2"), new_job("job-3", request_id="req-1")]
    )

    assert [(job.job_id, changes is None) for job, changes in results] == [
        ("job-2", False),
        ("job-1", True),
    ]
    assert results[1][0] == first
    with pytest.raises(NotFound):
        await store.get_job(TENANT, "job-3")


async def test_a_request_id_reused_among_jobs_created_together_stores_none_of_them(
    store: Store,
) -> None:
    await create(store, new_job("job-1", request_id="req-1", fingerprint="fp-1"))

    with pytest.raises(RequestIdReused) as raised:
        await store.create_jobs(
            [
                new_job("job-2"),
                new_job("job-3", request_id="req-3"),
                new_job("job-4", request_id="req-1", fingerprint="fp-2"),
            ]
        )

    assert (raised.value.reason, raised.value.field, raised.value.index) == (
        Reason.REQUEST_ID_REUSED,
        "request_id",
        2,
    )
    for job_id in ("job-2", "job-3", "job-4"):
        with pytest.raises(NotFound):
            await store.get_job(TENANT, job_id)
    # req-3 was given back with the rest: a new job may take it.
    assert (await create(store, new_job("job-5", request_id="req-3"))).job_id == "job-5"


async def test_jobs_created_together_that_the_database_refuses_fail_together(
    store: Store,
) -> None:
    await create(store, new_job("job-1"))

    results = await asyncio.gather(
        store.create_jobs([new_job("job-2"), new_job("job-1", now=at(9))]),  # job-1 exists
        create_one(store, new_job("job-3")),
        return_exceptions=True,
    )

    assert isinstance(results[0], Exception)
    assert not isinstance(results[1], BaseException)
    with pytest.raises(NotFound):
        await store.get_job(TENANT, "job-2")
    assert (await store.get_job(TENANT, "job-1")).create_time == NOW
    assert (await store.get_job(TENANT, "job-3")).state is JobState.PENDING


# -- update_job -------------------------------------------------------------------------------


async def test_update_job_stores_what_the_mutation_changed(store: Store) -> None:
    await create(store, new_job("job-1", todo("a"), todo("b", "a")))

    job, task, changes = await store.update_job(TENANT, "job-1", assigning("a"))

    assert task.state is TaskState.RUNNING
    assert job.state is JobState.RUNNING
    assert changes.dirty_tasks == {"a"}
    assert await store.get_job(TENANT, "job-1") == job

    job, result, changes = await store.update_job(
        TENANT, "job-1", lambda j: j.succeed("a", attempt=1, outputs={"x": [1, 2]}, now=at(1))
    )
    assert result is None
    assert changes.queued == ["b"]
    read = await store.get_job(TENANT, "job-1")
    assert read == job
    assert read.tasks["a"].outputs == {"x": [1, 2]}
    assert read.tasks["b"].state is TaskState.QUEUED

    await store.update_job(TENANT, "job-1", assigning("b"))
    job, _, changes = await store.update_job(
        TENANT, "job-1", lambda j: j.succeed("b", attempt=1, outputs={}, now=at(2))
    )
    assert job.state is JobState.SUCCEEDED
    events = await store.list_events(TENANT, "job-1", after_sequence=0, limit=100)
    assert [e.sequence for e in events] == list(range(1, job.last_event_sequence + 1))
    assert events[-1] == changes.events[-1]
    assert events[-1].terminal
    assert (await store.get_job(TENANT, "job-1")).end_time == at(2)


async def test_update_job_of_an_unknown_or_foreign_job_is_not_found(store: Store) -> None:
    await create(store, new_job("job-1"))
    calls: list[Job] = []

    for tenant, job_id in [(TENANT, "nope"), (OTHER, "job-1")]:
        with pytest.raises(NotFound) as raised:
            await store.update_job(tenant, job_id, calls.append)
        assert raised.value.reason is Reason.JOB_NOT_FOUND
        assert raised.value.field == "job_id"
    assert calls == []


async def test_a_failing_mutation_rolls_back_alone_within_its_batch(store: Store) -> None:
    await create(store, new_job("job-1"))
    await create(store, new_job("job-2"))

    def cancel_then_refuse(job: Job) -> None:
        job.cancel(now=at(1))  # changes the aggregate in memory, then the mutation fails
        raise FailedPrecondition("refused after changing the job")

    def break_down(job: Job) -> None:
        job.cancel(now=at(1))
        raise ValueError("not a domain error")

    results = await asyncio.gather(
        store.update_job(TENANT, "job-1", cancel_then_refuse),
        store.update_job(TENANT, "job-2", assigning("a")),
        store.update_job(TENANT, "job-2", break_down),
        store.update_job(TENANT, "job-1", assigning("a")),
        return_exceptions=True,
    )

    assert isinstance(results[0], FailedPrecondition)
    assert isinstance(results[2], ValueError)
    assert not isinstance(results[1], BaseException)
    assert not isinstance(results[3], BaseException)
    for job_id in ("job-1", "job-2"):
        job = await store.get_job(TENANT, job_id)
        assert job.state is JobState.RUNNING
        assert not job.cancel_requested
        assert job.tasks["a"].state is TaskState.RUNNING
        events = await store.list_events(TENANT, job_id, after_sequence=0, limit=100)
        assert [e.sequence for e in events] == list(range(1, job.last_event_sequence + 1))


async def test_changes_of_one_job_in_one_batch_are_all_stored_in_order(store: Store) -> None:
    await asyncio.gather(  # two creations in one batch, each with its labels
        create_one(store, new_job("job-1", todo("a"), todo("b", "a"), labels={"team": "ops"})),
        create_one(store, new_job("job-2", labels={"team": "dev"})),
    )

    results = await asyncio.gather(
        store.update_job(TENANT, "job-1", assigning("a")),
        store.update_job(TENANT, "job-2", assigning("a")),
        store.update_job(
            TENANT, "job-1", lambda j: j.succeed("a", attempt=1, outputs={"n": 1}, now=at(1))
        ),
        store.update_job(TENANT, "job-1", assigning("b")),
    )

    job = await store.get_job(TENANT, "job-1")
    assert job == results[-1][0]
    assert job.tasks["a"].state is TaskState.SUCCEEDED
    assert job.tasks["a"].outputs == {"n": 1}
    assert job.tasks["b"].state is TaskState.RUNNING
    events = await store.list_events(TENANT, "job-1", after_sequence=0, limit=100)
    assert [e.sequence for e in events] == list(range(1, job.last_event_sequence + 1))
    assert (await store.get_job(TENANT, "job-2")).tasks["a"].state is TaskState.RUNNING
    by_label = await store.list_jobs(TENANT, JobFilter(labels={"team": "ops"}), after=None, limit=9)
    assert [j.job_id for j in by_label] == ["job-1"]


async def test_a_write_the_database_refuses_fails_alone_within_its_batch(store: Store) -> None:
    await create(store, new_job("job-1"))
    await create(store, new_job("job-2"))

    results = await asyncio.gather(
        create_one(store, new_job("job-1", now=at(9))),  # the same job id again: refused
        store.update_job(TENANT, "job-2", assigning("a")),
        create_one(store, new_job("job-3")),
        return_exceptions=True,
    )

    assert isinstance(results[0], Exception)
    assert not isinstance(results[0], DomainError)
    assert not isinstance(results[1], BaseException)
    assert not isinstance(results[2], BaseException)
    assert (await store.get_job(TENANT, "job-1")).create_time == NOW
    assert (await store.get_job(TENANT, "job-2")).tasks["a"].state is TaskState.RUNNING
    assert (await store.get_job(TENANT, "job-3")).state is JobState.PENDING


async def test_a_lone_refused_write_stores_nothing_and_the_next_one_commits(store: Store) -> None:
    # One write per transaction (the usual case of a large job's progress): no savepoint.
    await create(store, new_job("job-1"))

    def cancel_then_refuse(job: Job) -> None:
        job.cancel(now=at(1))
        raise FailedPrecondition("refused after changing the job")

    with pytest.raises(FailedPrecondition):
        await store.update_job(TENANT, "job-1", cancel_then_refuse)
    # The same job id again: the database refuses it.
    [refused] = await asyncio.gather(
        create_one(store, new_job("job-1", now=at(9))), return_exceptions=True
    )
    assert isinstance(refused, Exception)
    assert not isinstance(refused, DomainError)
    await store.update_job(TENANT, "job-1", assigning("a"))

    job = await store.get_job(TENANT, "job-1")
    assert (job.create_time, job.cancel_requested) == (NOW, False)
    assert job.tasks["a"].state is TaskState.RUNNING
    events = await store.list_events(TENANT, "job-1", after_sequence=0, limit=100)
    assert [e.sequence for e in events] == list(range(1, job.last_event_sequence + 1))


async def test_stale_attempts_are_refused_and_change_nothing(store: Store) -> None:
    await create(store, new_job("job-1"))
    await store.update_job(TENANT, "job-1", assigning("a"))
    before = await store.get_job(TENANT, "job-1")

    with pytest.raises(StaleAttempt):
        await store.update_job(TENANT, "job-1", assigning("a"))
    with pytest.raises(StaleAttempt):
        await store.update_job(
            TENANT, "job-1", lambda j: j.succeed("a", attempt=2, outputs={}, now=at(1))
        )

    assert await store.get_job(TENANT, "job-1") == before


async def test_retry_re_drives_a_failed_job(store: Store) -> None:
    await create(store, new_job("job-1"))
    await store.update_job(TENANT, "job-1", assigning("a"))
    failed, _, _ = await store.update_job(
        TENANT,
        "job-1",
        lambda j: j.fail("a", attempt=1, error=TaskError(code="X", message="x"), now=at(1)),
    )
    assert failed.state is JobState.FAILED
    assert failed.dead_lettered

    job, _, changes = await store.update_job(TENANT, "job-1", lambda j: j.retry(now=at(2)))

    assert changes.queued == ["a"]
    read = await store.get_job(TENANT, "job-1")
    assert read == job
    assert (read.state, read.dead_lettered, read.retry_count) == (JobState.PENDING, False, 1)


# -- tenant scoping ---------------------------------------------------------------------------


async def test_every_read_and_write_is_scoped_by_tenant(store: Store) -> None:
    await create(store, new_job("job-1", conversation_id="conv-1"))
    await store.update_job(TENANT, "job-1", assigning("a"))
    await store.save_message(message("m-1", job_id="job-1"))

    with pytest.raises(NotFound):
        await store.get_job(OTHER, "job-1")
    with pytest.raises(NotFound):
        await store.list_events(OTHER, "job-1", after_sequence=0, limit=10)
    assert await store.list_jobs(OTHER, JobFilter(), after=None, limit=10) == []
    ref = AttemptRef("job-1", "a", 1)
    assert await store.renew_leases(OTHER, "agent-x", [ref], at(99)) == [ref]
    assert (await store.get_job(TENANT, "job-1")).tasks["a"].lease_until == LEASE
    assert await store.conversation_job(OTHER, "conv-1") is None
    # The same message id in another tenant is another message.
    await store.save_message(message("m-1", tenant=OTHER, job_id="job-9"))
    assert await store.conversation_job(OTHER, "conv-1") == "job-9"
    assert await store.conversation_job(TENANT, "conv-1") == "job-1"


# -- list_jobs ----------------------------------------------------------------------------------


@pytest.fixture
async def listed(store: Store) -> Store:
    """job-1 .. job-4 in TENANT (job-3 FAILED and dead-lettered, job-4 CANCELLED; job-3 and
    job-4 created at the same instant) and job-5 in OTHER."""
    await create(store, new_job("job-1", intent="alpha", labels={"team": "ops", "env": "prod"}))
    await create(store, new_job("job-2", intent="beta", labels={"team": "ops"}, now=at(1)))
    await create(store, new_job("job-3", intent="alpha", labels={"team": "dev"}, now=at(2)))
    await create(store, new_job("job-4", intent="beta", now=at(2)))
    await create(store, new_job("job-5", tenant=OTHER, now=at(1)))
    await store.update_job(TENANT, "job-3", assigning("a"))
    await store.update_job(
        TENANT,
        "job-3",
        lambda j: j.fail("a", attempt=1, error=TaskError(code="X", message="x"), now=at(3)),
    )
    await store.update_job(TENANT, "job-4", lambda j: j.cancel(now=at(3)))
    return store


async def list_ids(
    store: Store,
    job_filter: JobFilter | None = None,
    *,
    after: PagePosition | None = None,
    limit: int = 100,
) -> list[str]:
    jobs = await store.list_jobs(TENANT, job_filter or JobFilter(), after=after, limit=limit)
    return ids(jobs)


async def test_list_jobs_newest_first_with_job_id_breaking_ties(listed: Store) -> None:
    jobs = await listed.list_jobs(TENANT, JobFilter(), after=None, limit=100)

    assert ids(jobs) == ["job-4", "job-3", "job-2", "job-1"]
    assert jobs[1] == await listed.get_job(TENANT, "job-3")


@pytest.mark.parametrize(
    ("job_filter", "expected"),
    [
        (JobFilter(states=frozenset({JobState.FAILED, JobState.CANCELLED})), ["job-4", "job-3"]),
        (JobFilter(states=frozenset({JobState.PENDING})), ["job-2", "job-1"]),
        (JobFilter(intent="alpha"), ["job-3", "job-1"]),
        (JobFilter(intent="gamma"), []),
        (JobFilter(labels={"team": "ops"}), ["job-2", "job-1"]),
        (JobFilter(labels={"team": "ops", "env": "prod"}), ["job-1"]),
        (JobFilter(labels={"team": "ops", "env": "test"}), []),
        (JobFilter(created_after=NOW), ["job-4", "job-3", "job-2"]),
        (JobFilter(created_before=at(2)), ["job-2", "job-1"]),
        (JobFilter(created_after=NOW, created_before=at(2)), ["job-2"]),
        (JobFilter(dead_lettered=True), ["job-3"]),
        (JobFilter(dead_lettered=False), ["job-4", "job-2", "job-1"]),
        (JobFilter(intent="beta", states=frozenset({JobState.CANCELLED})), ["job-4"]),
    ],
    ids=[
        "states",
        "pending",
        "intent",
        "no-intent",
        "label",
        "labels-and",
        "labels-mismatch",
        "after-exclusive",
        "before-exclusive",
        "between",
        "dead-lettered",
        "not-dead-lettered",
        "combined",
    ],
)
async def test_list_jobs_filters(listed: Store, job_filter: JobFilter, expected: list[str]) -> None:
    assert await list_ids(listed, job_filter) == expected


async def test_list_jobs_pages_continue_after_a_position(listed: Store) -> None:
    first = await listed.list_jobs(TENANT, JobFilter(), after=None, limit=2)
    assert ids(first) == ["job-4", "job-3"]
    position = PagePosition(create_time=first[-1].create_time, job_id=first[-1].job_id)

    assert await list_ids(listed, after=position, limit=2) == ["job-2", "job-1"]
    # Inside a tie of create_time, job_id decides.
    tie = PagePosition(create_time=at(2), job_id="job-4")
    assert await list_ids(listed, after=tie) == ["job-3", "job-2", "job-1"]
    last = PagePosition(create_time=NOW, job_id="job-1")
    assert await list_ids(listed, after=last) == []
    dead = JobFilter(dead_lettered=False)
    assert await list_ids(listed, dead, after=PagePosition(create_time=at(2), job_id="job-4")) == [
        "job-2",
        "job-1",
    ]


# -- events ---------------------------------------------------------------------------------------


async def test_list_events_in_order_after_a_sequence(store: Store) -> None:
    await create(store, new_job("job-1", todo("a"), todo("b")))
    await store.update_job(TENANT, "job-1", assigning("a"))
    for percent in (10.0, 50.0, 90.0):

        def report(job: Job, percent: float = percent) -> None:
            job.progress("a", attempt=1, percent=percent, message="", now=at(1))

        await store.update_job(TENANT, "job-1", report)
    job = await store.get_job(TENANT, "job-1")
    everything = await store.list_events(TENANT, "job-1", after_sequence=0, limit=100)
    assert [e.sequence for e in everything] == list(range(1, job.last_event_sequence + 1))

    page = await store.list_events(TENANT, "job-1", after_sequence=3, limit=2)

    assert page == everything[3:5]
    assert await store.list_events(TENANT, "job-1", after_sequence=99, limit=10) == []
    assert isinstance(everything[0].payload, JobStateChanged)
    with pytest.raises(NotFound):
        await store.list_events(TENANT, "nope", after_sequence=0, limit=10)


async def test_inputs_of_a_todo_survive_a_reopening_and_the_queue(open_store: OpenStore) -> None:
    # Read back from the database itself, not from a cache of live jobs: the store is reopened.
    inputs = {
        "value": OutputRef(task_id="a", output_key="x"),
        "name": OutputRef(task_id="a", output_key="label ✓"),
    }
    store = await open_store()
    await create(store, new_job("job-1", todo("a"), todo("b", "a", inputs=inputs)))
    await store.update_job(TENANT, "job-1", assigning("a"))
    await store.update_job(
        TENANT,
        "job-1",
        lambda j: j.succeed("a", attempt=1, outputs={"x": 41, "label ✓": "hi"}, now=at(1)),
    )
    await store.close()

    reopened = await open_store()
    job = await reopened.get_job(TENANT, "job-1")
    assert job.tasks["b"].todo == todo("b", "a", inputs=inputs)
    assert job.tasks["a"].todo.inputs == {}
    assert job.inputs_of("b") == {"value": 41, "name": "hi"}
    # Inside a transaction too, as the orchestrator resolves them when it assigns b.
    _, resolved, _ = await reopened.update_job(TENANT, "job-1", lambda j: j.inputs_of("b"))
    assert resolved == {"value": 41, "name": "hi"}
    [queued] = await reopened.queued_tasks(limit=10)
    assert queued.todo == todo("b", "a", inputs=inputs)


async def test_an_agents_error_details_survive_a_reopening(open_store: OpenStore) -> None:
    # The browser's evidence (URL, DOM excerpt) in an attempt's error, read back from the
    # database itself: the store is reopened. Events carry the same error.
    details = {"url": "http://portal/invoices", "op_index": 2.0, "artifacts": ["x.png"], "n": None}
    error = TaskError(code="ELEMENT_NOT_FOUND", message="no element", details=details)
    store = await open_store()
    await create(store, new_job("job-1"))
    await store.update_job(TENANT, "job-1", assigning("a"))
    await store.update_job(
        TENANT, "job-1", lambda j: j.fail("a", attempt=1, error=error, now=at(1))
    )
    await store.close()

    reopened = await open_store()
    job = await reopened.get_job(TENANT, "job-1")
    assert job.tasks["a"].attempts[0].error == error
    assert job.tasks["a"].error == error
    events = await reopened.list_events(TENANT, "job-1", after_sequence=0, limit=100)
    errors = [getattr(e.payload, "error", None) for e in events]
    assert [e for e in errors if e is not None] == [error, error]  # the task's, the job's


# -- dispatch support ---------------------------------------------------------------------------


async def test_queued_tasks_oldest_first_with_attempt_and_not_before(store: Store) -> None:
    await create(store, new_job("job-1", todo("a", retry_policy=RETRY_LATER)))
    await create(store, new_job("job-2", todo("a"), tenant=OTHER, now=at(1)))
    await store.update_job(TENANT, "job-1", assigning("a"))
    await store.update_job(
        TENANT,
        "job-1",
        lambda j: j.fail(
            "a", attempt=1, error=TaskError(code="X", message="x", retryable=True), now=at(3)
        ),
    )

    queued = await store.queued_tasks(limit=10)

    assert [(q.tenant, q.job_id, q.todo.id, q.attempt) for q in queued] == [
        (OTHER, "job-2", "a", 0),
        (TENANT, "job-1", "a", 1),
    ]
    assert queued[0].not_before is None
    assert queued[1].not_before == at(13)
    assert queued[1].todo == todo("a", retry_policy=RETRY_LATER)
    assert [q.job_id for q in await store.queued_tasks(limit=1)] == ["job-2"]
    assert [q.job_id for q in await store.queued_tasks(limit=10, queued_before=at(3))] == ["job-2"]
    assert await store.queued_tasks(limit=10, queued_before=at(1)) == []


async def test_expired_attempts_are_the_running_ones_whose_lease_ended(store: Store) -> None:
    await create(store, new_job("job-1"))
    await create(store, new_job("job-2", tenant=OTHER))
    await create(store, new_job("job-3"))
    await store.update_job(TENANT, "job-1", assigning("a", lease_until=at(10)))
    await store.update_job(OTHER, "job-2", assigning("a", lease_until=at(20)))

    assert await store.expired_attempts(at(10), limit=10) == []  # ends at, not before, 10 s
    assert await store.expired_attempts(at(15), limit=10) == [(TENANT, AttemptRef("job-1", "a", 1))]
    await store.update_job(
        TENANT, "job-1", lambda j: j.lose("a", attempt=1, max_redeliveries=3, now=at(15))
    )
    assert await store.expired_attempts(at(30), limit=10) == [(OTHER, AttemptRef("job-2", "a", 1))]


async def test_expired_attempts_respect_the_limit(store: Store) -> None:
    for n in range(3):
        await create(store, new_job(f"job-{n}"))
        await store.update_job(TENANT, f"job-{n}", assigning("a", lease_until=at(n)))

    assert len(await store.expired_attempts(at(60), limit=2)) == 2


async def test_overdue_jobs_are_the_unfinished_ones_past_their_deadline(store: Store) -> None:
    for job_id in ("job-1", "job-2", "job-3"):
        await create(store, new_job(job_id))
    assert await store.overdue_jobs(at(3599), limit=10) == []
    await store.update_job(TENANT, "job-2", lambda job: job.expire(now=at(3601)))
    await store.update_job(TENANT, "job-3", lambda job: job.cancel(now=at(1)))
    assert await store.overdue_jobs(at(3601), limit=10) == [(TENANT, "job-1")]
    stored = await store.get_job(TENANT, "job-2")
    assert stored.state is JobState.FAILED
    assert stored.cancel_reason is Reason.JOB_DEADLINE_EXCEEDED


async def test_unstarted_tasks_are_the_queued_ones_past_their_start_by(store: Store) -> None:
    await create(store, new_job("job-1"))  # task a: QUEUED, start by at(120)
    await create(store, new_job("job-2", now=at(10)))  # start by at(130)
    await create(store, new_job("job-3", todo("a"), todo("b", "a")))
    await store.update_job(TENANT, "job-3", assigning("a"))  # running: no start_by
    assert await store.unstarted_tasks(at(119), limit=10) == []
    assert await store.unstarted_tasks(at(200), limit=10) == [
        (TENANT, "job-1", "a"),
        (TENANT, "job-2", "a"),
    ]
    assert await store.unstarted_tasks(at(200), limit=1) == [(TENANT, "job-1", "a")]
    await store.update_job(TENANT, "job-1", lambda job: job.miss_start("a", now=at(121), why="x"))
    assert await store.unstarted_tasks(at(200), limit=10) == [(TENANT, "job-2", "a")]
    assert (await store.get_job(TENANT, "job-1")).tasks["a"].state is TaskState.FAILED


async def test_leases_are_never_renewed_past_the_attempt_timeout(store: Store) -> None:
    await create(store, new_job("job-1", todo("a"), todo("b")))
    timeouts: dict[str, datetime | None] = {"a": at(40), "b": None}

    def start_both(job: Job) -> None:
        for task_id, timeout_at in timeouts.items():
            job.assign(
                task_id,
                attempt=1,
                agent_id="agent-1",
                lease_until=LEASE,
                now=NOW,
                timeout_at=timeout_at,
            )

    await store.update_job(TENANT, "job-1", start_both)
    refs = [AttemptRef("job-1", "a", 1), AttemptRef("job-1", "b", 1)]
    assert await store.renew_leases(TENANT, "agent-1", refs, at(99)) == []
    tasks = (await store.get_job(TENANT, "job-1")).tasks
    assert (tasks["a"].lease_until, tasks["a"].timeout_at) == (at(40), at(40))
    assert tasks["b"].lease_until == at(99)
    assert await store.expired_attempts(at(41), limit=10) == [(TENANT, refs[0])]


async def test_request_ids_are_released_when_their_retention_ends(store: Store) -> None:
    await create(store, new_job("job-1", request_id="req-1"))
    await create(store, new_job("job-2", request_id="req-2", now=at(100)))
    await create(store, new_job("job-3", now=at(1)))  # no request id: nothing to release

    assert await store.forget_request_ids(at(50), limit=10) == 1
    assert await store.forget_request_ids(at(50), limit=10) == 0

    # req-1 now makes a new job, even for another request; req-2 still returns its job.
    reused = await create(store, new_job("job-4", request_id="req-1", fingerprint="fp-2"))
    assert reused.job_id == "job-4"
    again, changes = await create_one(store, new_job("job-5", request_id="req-2"))
    assert (again.job_id, changes) == ("job-2", None)
    released = await store.get_job(TENANT, "job-1")
    assert (released.request_id, released.request_fingerprint) == ("", "")


async def test_releasing_request_ids_respects_the_limit(store: Store) -> None:
    for n in range(3):
        await create(store, new_job(f"job-{n}", request_id=f"req-{n}"))
    assert await store.forget_request_ids(at(1), limit=2) == 2
    assert await store.forget_request_ids(at(1), limit=2) == 1


async def finished(store: Store, job_id: str, *, at_s: float) -> Job:
    """The job, created and cancelled (it ends at once: nothing runs) at NOW + at_s."""
    await create(store, new_job(job_id, todo("a"), todo("b", "a"), now=at(at_s)))
    job, _, _ = await store.update_job(TENANT, job_id, lambda j: j.cancel(now=at(at_s)))
    assert job.is_terminal
    return job


async def sequences(store: Store, job_id: str) -> list[int]:
    return [e.sequence for e in await store.list_events(TENANT, job_id, after_sequence=0, limit=99)]


async def test_events_of_jobs_that_ended_before_the_cutoff_are_pruned_but_the_last(
    store: Store,
) -> None:
    old = await finished(store, "job-old", at_s=10)
    recent = await finished(store, "job-recent", at_s=100)
    await create(store, new_job("job-running", now=at(1)))  # never ends
    running_events = await sequences(store, "job-running")

    deleted, position = await store.prune_events(at(50), after=None, limit=10)

    assert deleted == old.last_event_sequence - 1
    assert await sequences(store, "job-old") == [old.last_event_sequence]
    [kept] = await store.list_events(TENANT, "job-old", after_sequence=0, limit=9)
    assert kept.terminal  # the terminal event is always kept
    assert await sequences(store, "job-recent") == list(range(1, recent.last_event_sequence + 1))
    assert await sequences(store, "job-running") == running_events
    assert position is not None
    assert position.job_id == "job-old"
    # Going on from there finds nothing more to prune, nor does pruning again from the start.
    assert await store.prune_events(at(50), after=position, limit=10) == (0, position)
    assert (await store.prune_events(at(50), after=None, limit=10))[0] == 0


async def test_pruning_walks_the_finished_jobs_in_order_of_their_end(store: Store) -> None:
    for n in range(3):
        await finished(store, f"job-{n}", at_s=10 - n)  # job-2 ended first

    _, first = await store.prune_events(at(50), after=None, limit=2)
    _, second = await store.prune_events(at(50), after=first, limit=2)

    assert first is not None
    assert (first.job_id, first.end_time) == ("job-1", at(9))
    assert second is not None
    assert second.job_id == "job-0"
    for n in range(3):
        assert len(await sequences(store, f"job-{n}")) == 1


async def test_renew_leases_extends_current_attempts_and_returns_stale_ones(store: Store) -> None:
    await create(store, new_job("job-1", todo("a"), todo("b")))
    await store.update_job(TENANT, "job-1", assigning("a"))
    current = AttemptRef("job-1", "a", 1)
    stale = [
        AttemptRef("job-1", "a", 2),  # not the current attempt
        AttemptRef("job-1", "b", 1),  # not running
        AttemptRef("job-9", "a", 1),  # no such job
    ]

    result = await store.renew_leases(TENANT, "agent-1", [stale[0], current, *stale[1:]], at(99))

    assert result == stale
    task = (await store.get_job(TENANT, "job-1")).tasks["a"]
    assert (task.lease_until, task.agent_id) == (at(99), "agent-1")
    assert (await store.get_job(TENANT, "job-1")).tasks["b"].lease_until is None
    assert await store.renew_leases(TENANT, "agent-1", [], at(120)) == []


async def test_only_the_agent_holding_an_attempt_renews_its_lease(store: Store) -> None:
    await create(store, new_job("job-1", todo("a")))
    await store.update_job(TENANT, "job-1", assigning("a", agent_id="agent-1"))
    ref = AttemptRef("job-1", "a", 1)

    # Another agent of the tenant lists the attempt: not renewed, not taken over.
    assert await store.renew_leases(TENANT, "agent-2", [ref], at(99)) == [ref]
    task = (await store.get_job(TENANT, "job-1")).tasks["a"]
    assert (task.lease_until, task.agent_id) == (LEASE, "agent-1")


async def test_a_report_from_an_agent_not_holding_the_attempt_changes_nothing(
    store: Store,
) -> None:
    await create(store, new_job("job-1", todo("a")))
    await store.update_job(TENANT, "job-1", assigning("a", agent_id="agent-1"))

    def forged(job: Job) -> None:
        job.check_held("a", attempt=1, agent_id="agent-2")
        job.succeed("a", attempt=1, outputs={"forged": True}, now=NOW)

    with pytest.raises(AttemptNotHeld):
        await store.update_job(TENANT, "job-1", forged)
    task = (await store.get_job(TENANT, "job-1")).tasks["a"]
    assert (task.state, task.outputs, task.agent_id) == (TaskState.RUNNING, None, "agent-1")


# -- LAM messages ---------------------------------------------------------------------------------


def message(
    message_id: str,
    *,
    tenant: str = TENANT,
    conversation_id: str = "conv-1",
    job_id: str = "",
    inbound: bool = True,
    create_time: datetime = NOW,
) -> StoredMessage:
    return StoredMessage(
        tenant=tenant,
        conversation_id=conversation_id,
        message_id=message_id,
        performative="request" if inbound else "agree",
        sender="caller",
        inbound=inbound,
        job_id=job_id,
        body_json='{"content": "ü"}',
        create_time=create_time,
    )


async def test_messages_are_saved_once_and_lead_to_their_conversation_job(store: Store) -> None:
    await store.save_message(message("m-1"))
    await store.save_message(message("m-1", inbound=False, job_id="job-1", create_time=at(1)))
    await store.save_message(message("m-1", inbound=False, job_id="job-1", create_time=at(1)))
    await store.save_message(message("m-2", job_id="job-2", create_time=at(2)))
    await store.save_message(message("m-3", conversation_id="conv-2"))

    assert await store.conversation_job(TENANT, "conv-1") == "job-1"  # the earliest with a job
    assert await store.conversation_job(TENANT, "conv-2") is None
    assert await store.conversation_job(TENANT, "conv-9") is None


async def test_saving_a_message_twice_in_one_batch_is_a_no_op(store: Store) -> None:
    await asyncio.gather(
        store.save_message(message("m-1", job_id="job-1")),
        store.save_message(message("m-1", job_id="job-1")),
    )

    assert await store.conversation_job(TENANT, "conv-1") == "job-1"


# -- close --------------------------------------------------------------------------------------


async def test_close_finishes_pending_writes(open_store: OpenStore) -> None:
    store = await open_store()
    await create(store, new_job("job-1"))
    pending = asyncio.ensure_future(store.update_job(TENANT, "job-1", assigning("a")))
    await asyncio.sleep(0)  # the update is submitted, its batch not yet run

    await store.close()

    job, _, _ = await pending
    assert job.tasks["a"].state is TaskState.RUNNING
    with pytest.raises(RuntimeError, match="closed"):
        await store.update_job(TENANT, "job-1", assigning("a", 2))
    await store.close()  # closing twice is harmless
    reopened = await open_store()
    assert (await reopened.get_job(TENANT, "job-1")).tasks["a"].state is TaskState.RUNNING


async def test_domain_errors_keep_their_reason_through_the_store(store: Store) -> None:
    await create(store, new_job("job-1"))

    with pytest.raises(DomainError) as raised:
        await store.update_job(TENANT, "job-1", lambda j: j.task("missing"))

    assert raised.value.reason is Reason.TASK_NOT_FOUND
