"""ToDo inputs: each malformed one refused with reason and field (ToDo.validate, TaskGraph.build),
and resolved from upstream outputs at assignment, or failing the task when a key is missing
(Job.inputs_of, Job.fail_unresolved)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from cpa_scheduler.domain import (
    InvalidArgument,
    Job,
    JobOptions,
    JobSource,
    JobState,
    JobStateChanged,
    OutputRef,
    Reason,
    SourceKind,
    StaleAttempt,
    TaskError,
    TaskGraph,
    TaskState,
    TaskStateChanged,
    ToDo,
    UnresolvedInput,
)
from cpa_scheduler.domain import task_graph as task_graph_module

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
LEASE = NOW + timedelta(seconds=30)
NAME_RULE = "must be 1-63 letters, digits or '_', starting with a letter"


def ref(task_id: str, output_key: str = "out") -> OutputRef:
    return OutputRef(task_id=task_id, output_key=output_key)


def todo(task_id: str, *depends_on: str, **inputs: OutputRef) -> ToDo:
    return ToDo(id=task_id, action="click", depends_on=depends_on, inputs=inputs)


def build_error(*todos: ToDo) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        TaskGraph.from_todos(todos)
    return caught.value


# -- ToDo.validate: the inputs on their own ---------------------------------------------------


@pytest.mark.parametrize("name", ["a", "value", "Order_id2", "x" * 63, "a_"])
def test_valid_input_names_pass(name: str) -> None:
    ToDo(id="b", action="click", inputs={name: ref("a")}).validate()


@pytest.mark.parametrize("name", ["", "1st", "_a", "has space", "a-b", "a.b", "x" * 64, "a\n", "ä"])
def test_bad_input_name_is_refused_naming_the_input(name: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        ToDo(id="b", action="click", inputs={name: ref("a")}).validate("todos[1]")

    error = caught.value
    assert (error.reason, error.field) == (Reason.INVALID_FIELD, f"todos[1].inputs[{name}]")
    assert error.message == f"task 'b': input name {name!r} {NAME_RULE}"


def test_input_without_task_id_is_a_missing_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        ToDo(id="b", action="click", inputs={"v": ref("")}).validate("todos[1]")

    error = caught.value
    assert (error.reason, error.field) == (Reason.MISSING_FIELD, "todos[1].inputs[v].task_id")
    assert error.message == "task 'b': input 'v' names no task"


def test_input_without_output_key_is_a_missing_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        ToDo(id="b", action="click", inputs={"v": ref("a", "")}).validate("todos[1]")

    error = caught.value
    assert (error.reason, error.field) == (Reason.MISSING_FIELD, "todos[1].inputs[v].output_key")
    assert error.message == "task 'b': input 'v' names no output_key of task 'a'"


def test_the_first_bad_input_by_name_is_reported_whatever_the_mapping_order() -> None:
    inputs = {"zeta": ref(""), "alpha": ref("a", ""), "mid": ref("a")}
    with pytest.raises(InvalidArgument) as caught:
        ToDo(id="b", action="click", inputs=inputs).validate("t")

    assert caught.value.field == "t.inputs[alpha].output_key"


# -- TaskGraph.build: inputs come from upstream tasks -----------------------------------------


def test_inputs_from_direct_and_transitive_dependencies_are_accepted() -> None:
    graph = TaskGraph.from_todos(
        [
            todo("a"),
            todo("b", "a"),
            todo("c", "b", direct=ref("b"), transitive=ref("a", "x")),
        ]
    )

    assert graph.get("c") == todo("c", "b", direct=ref("b"), transitive=ref("a", "x"))


def test_input_from_an_unknown_task_is_an_unknown_dependency() -> None:
    error = build_error(todo("a"), todo("b", "a", v=ref("ghost")))

    assert (error.reason, error.field) == (
        Reason.UNKNOWN_DEPENDENCY,
        "todos[1].inputs[v].task_id",
    )
    assert error.message == "task 'b': input 'v' takes an output of unknown task 'ghost'"


@pytest.mark.parametrize(
    ("todos", "field", "what"),
    [
        # A sibling: both depend on a, neither on the other.
        (
            [todo("a"), todo("b", "a"), todo("c", "a", v=ref("b"))],
            "todos[2].inputs[v].task_id",
            "task 'b'",
        ),
        # Downstream: b runs after c, so its outputs do not exist when c starts.
        (
            [todo("a"), todo("c", "a", v=ref("b")), todo("b", "c")],
            "todos[1].inputs[v].task_id",
            "task 'b'",
        ),
        # No dependencies at all.
        ([todo("a"), todo("c", v=ref("a"))], "todos[1].inputs[v].task_id", "task 'a'"),
        # Its own task.
        ([todo("a"), todo("c", "a", v=ref("c"))], "todos[1].inputs[v].task_id", "its own task"),
    ],
    ids=["sibling", "downstream", "unrelated", "itself"],
)
def test_input_from_a_task_that_is_not_upstream_is_refused(
    todos: list[ToDo], field: str, what: str
) -> None:
    error = build_error(*todos)

    assert (error.reason, error.field) == (Reason.INVALID_FIELD, field)
    assert error.message.startswith(
        f"task 'c': input 'v' takes an output of {what}, which is not upstream of it"
    )


def test_the_first_bad_input_in_request_order_is_reported() -> None:
    error = build_error(
        todo("a"),
        todo("b"),
        todo("c", "a", z=ref("a"), y=ref("b")),  # y: b is not upstream of c
        todo("d", "c", x=ref("b")),
    )

    assert error.field == "todos[2].inputs[y].task_id"


def test_a_cycle_is_reported_before_inputs() -> None:
    error = build_error(todo("a", "b", v=ref("ghost")), todo("b", "a"))

    assert error.reason is Reason.GRAPH_CYCLE


def test_many_far_references_across_walks_agree_with_a_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Chunks of 3 referenced tasks: many walks, each of which must carry its own bits.
    monkeypatch.setattr(task_graph_module, "_UPSTREAM_CHUNK", 3)
    rng = random.Random(7)
    for _ in range(40):
        count = rng.randint(2, 25)
        deps = [sorted(rng.sample(range(i), rng.randint(0, min(i, 2)))) for i in range(count)]
        upstream: list[set[int]] = []
        for i in range(count):
            upstream.append(set(deps[i]).union(*(upstream[d] for d in deps[i])))
        inputs = {
            i: {f"in{k}": rng.randrange(count) for k in range(rng.randint(0, 3))}
            for i in range(count)
        }
        todos = [
            ToDo(
                id=f"t{i}",
                action="click",
                depends_on=tuple(f"t{d}" for d in deps[i]),
                inputs={name: ref(f"t{target}") for name, target in inputs[i].items()},
            )
            for i in range(count)
        ]
        bad = sorted(
            (i, name)
            for i in range(count)
            for name, target in inputs[i].items()
            if target not in upstream[i]
        )
        if not bad:
            TaskGraph.from_todos(todos)
            continue
        error = build_error(*todos)
        position, name = bad[0]
        assert error.field == f"todos[{position}].inputs[{name}].task_id"


def test_inputs_from_far_up_a_long_chain_build_in_linear_walks() -> None:
    # Every task takes an input from the task halfway up the chain: 2500 distinct far targets.
    count = 5000
    todos = [
        ToDo(
            id=f"t{i}",
            action="click",
            depends_on=(f"t{i - 1}",) if i else (),
            inputs={"half": ref(f"t{i // 2}")} if i > 1 else {},
        )
        for i in range(count)
    ]
    TaskGraph.from_todos(todos)

    todos.append(todo("stray", v=ref("t0")))
    assert build_error(*todos).field == f"todos[{count}].inputs[v].task_id"


# -- Job: resolution at assignment ----------------------------------------------------------


def make_job(*todos: ToDo) -> Job:
    return Job.create(
        job_id="job-1",
        tenant="tenant-a",
        graph=TaskGraph.from_todos(todos),
        source=JobSource(kind=SourceKind.TODOS),
        options=JobOptions(max_parallelism=10),
        now=NOW,
    )


def complete(job: Job, task_id: str, outputs: dict[str, object]) -> None:
    attempt = job.tasks[task_id].attempt + 1
    job.assign(task_id, attempt=attempt, agent_id="agent-1", lease_until=LEASE, now=NOW)
    job.succeed(task_id, attempt=attempt, outputs=outputs, now=NOW)


def test_inputs_resolve_to_the_upstream_outputs_by_input_name() -> None:
    job = make_job(
        todo("a"),
        todo("b", "a"),
        todo("c", "b", value=ref("a", "x"), name=ref("a", "label"), nested=ref("b", "doc")),
    )
    complete(job, "a", {"x": 41, "label": "hi", "unused": True})
    complete(job, "b", {"doc": {"pages": [1, 2]}})

    assert job.inputs_of("c") == {"value": 41, "name": "hi", "nested": {"pages": [1, 2]}}
    assert job.inputs_of("a") == {}


def test_an_output_key_the_upstream_did_not_produce_is_unresolved() -> None:
    job = make_job(todo("a"), todo("b", "a", value=ref("a", "nope")))
    complete(job, "a", {"x": 41, "label": "hi"})

    with pytest.raises(UnresolvedInput) as caught:
        job.inputs_of("b")

    unresolved = caught.value
    message = (
        "task 'b': input 'value' takes output 'nope' of task 'a', which did not produce it "
        "(its outputs: 'label', 'x')"
    )
    assert (unresolved.reason, unresolved.field, unresolved.message) == (
        Reason.UNRESOLVED_INPUT,
        "inputs[value].output_key",
        message,
    )
    assert unresolved.error == TaskError(
        code="UNRESOLVED_INPUT", message=message, retryable=False, reason=Reason.UNRESOLVED_INPUT
    )


def test_an_upstream_without_outputs_yet_is_unresolved() -> None:
    job = make_job(todo("a"), todo("b", "a", value=ref("a", "x")))

    with pytest.raises(UnresolvedInput) as caught:
        job.inputs_of("b")

    assert caught.value.message == (
        "task 'b': input 'value' takes output 'x' of task 'a', which has not succeeded"
    )
    assert caught.value.field == "inputs[value].task_id"


def test_an_unresolved_task_fails_without_an_attempt_and_its_dependents_are_skipped() -> None:
    job = make_job(todo("a"), todo("b", "a", value=ref("a", "nope")), todo("c", "b"))
    complete(job, "a", {"x": 41})
    job.take_changes()
    with pytest.raises(UnresolvedInput) as caught:
        job.inputs_of("b")

    job.fail_unresolved("b", attempt=1, unresolved=caught.value, now=NOW)

    b = job.tasks["b"]
    assert (b.state, b.attempt, b.attempts, b.error) == (
        TaskState.FAILED,
        0,
        [],
        caught.value.error,
    )
    assert job.tasks["c"].state is TaskState.SKIPPED
    assert job.state is JobState.FAILED
    assert job.error == caught.value.error
    assert job.dead_lettered
    changes = job.take_changes()
    assert [e.payload for e in changes.events[:2]] == [
        TaskStateChanged(
            task_id="b",
            from_state=TaskState.QUEUED,
            to_state=TaskState.FAILED,
            error=caught.value.error,
        ),
        TaskStateChanged(
            task_id="c",
            from_state=TaskState.PENDING,
            to_state=TaskState.SKIPPED,
            error=job.tasks["c"].error,
        ),
    ]
    assert changes.events[-1].payload == JobStateChanged(
        from_state=JobState.RUNNING, to_state=JobState.FAILED, error=caught.value.error
    )
    assert changes.queued == []


@pytest.mark.parametrize("attempt", [2, 0])
def test_fail_unresolved_is_fenced_like_assign(attempt: int) -> None:
    job = make_job(todo("a"), todo("b", "a", value=ref("a", "nope")))
    complete(job, "a", {})
    with pytest.raises(UnresolvedInput) as caught:
        job.inputs_of("b")

    with pytest.raises(StaleAttempt):
        job.fail_unresolved("b", attempt=attempt, unresolved=caught.value, now=NOW)

    assert job.tasks["b"].state is TaskState.QUEUED


def test_fail_unresolved_of_a_cancelled_job_is_stale() -> None:
    job = make_job(todo("a"), todo("b", "a", value=ref("a", "nope")))
    complete(job, "a", {})
    with pytest.raises(UnresolvedInput) as caught:
        job.inputs_of("b")
    job.cancel(now=NOW)

    with pytest.raises(StaleAttempt):
        job.fail_unresolved("b", attempt=1, unresolved=caught.value, now=NOW)

    assert job.tasks["b"].state is TaskState.CANCELLED
