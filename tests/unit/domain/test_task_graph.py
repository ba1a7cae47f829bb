"""TaskGraph: validation errors (reason, field, message), orders, batches and ready-set queries."""

from __future__ import annotations

import random

import pytest

from cpa_scheduler.domain import (
    GraphCycleError,
    InvalidArgument,
    NotFound,
    Reason,
    TaskGraph,
    ToDo,
)


def task(task_id: str, *depends_on: str) -> ToDo:
    return ToDo(id=task_id, action="click", depends_on=depends_on)


def graph_of(*todos: ToDo) -> TaskGraph:
    return TaskGraph.from_todos(todos)


def diamond() -> TaskGraph:
    return graph_of(task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c"))


def random_dag(size: int, *, seed: int) -> list[ToDo]:
    """Tasks with up to three random earlier dependencies each, then shuffled."""
    rng = random.Random(seed)
    todos = []
    for i in range(size):
        deps = rng.sample(range(i), k=min(i, rng.randint(0, 3)))
        todos.append(task(f"t{i}", *(f"t{d}" for d in deps)))
    rng.shuffle(todos)
    return todos


def reference_order(todos: list[ToDo]) -> tuple[str, ...]:
    """Quadratic but obviously right: repeatedly take the first task whose dependencies are done."""
    done: list[str] = []
    left = list(todos)
    while left:
        first = next(t for t in left if all(dep in done for dep in t.depends_on))
        done.append(first.id)
        left.remove(first)
    return tuple(done)


# -- shapes -------------------------------------------------------------------------------------


def test_sequential_chain() -> None:
    graph = graph_of(task("open"), task("login", "open"), task("download", "login"))

    assert graph.topological_order() == ("open", "login", "download")
    assert graph.parallel_batches() == (("open",), ("login",), ("download",))
    assert graph.roots() == ("open",)
    assert graph.dependencies("download") == ("login",)
    assert graph.dependents("open") == ("login",)
    assert graph.downstream("open") == ("login", "download")


def test_chain_listed_backwards_is_sorted_by_dependencies() -> None:
    graph = graph_of(task("c", "b"), task("b", "a"), task("a"))

    assert graph.topological_order() == ("a", "b", "c")
    assert graph.parallel_batches() == (("a",), ("b",), ("c",))
    assert graph.roots() == ("a",)


def test_parallel_tasks_form_one_batch_in_insertion_order() -> None:
    graph = graph_of(task("mail"), task("browser"), task("desktop"))

    assert graph.topological_order() == ("mail", "browser", "desktop")
    assert graph.parallel_batches() == (("mail", "browser", "desktop"),)
    assert graph.roots() == ("mail", "browser", "desktop")
    assert graph.dependents("mail") == ()


def test_diamond() -> None:
    graph = diamond()

    assert graph.topological_order() == ("a", "b", "c", "d")
    assert graph.parallel_batches() == (("a",), ("b", "c"), ("d",))
    assert graph.dependents("a") == ("b", "c")
    assert graph.dependencies("d") == ("b", "c")
    assert graph.downstream("a") == ("b", "c", "d")
    assert graph.downstream("c") == ("d",)
    assert graph.downstream("d") == ()


def test_mixed_graph_breaks_ties_by_insertion_order() -> None:
    graph = graph_of(
        task("d", "b", "c"),
        task("b", "a"),
        task("a"),
        task("c", "a"),
        task("e"),
        task("f", "e", "d"),
    )

    # a and e are ready first and a was inserted earlier; b, c and then d (inserted first of
    # all) each become ready before e is taken, so they go ahead of it.
    assert graph.topological_order() == ("a", "b", "c", "d", "e", "f")
    assert graph.parallel_batches() == (("a", "e"), ("b", "c"), ("d",), ("f",))
    assert graph.roots() == ("a", "e")
    assert graph.dependents("a") == ("b", "c")
    assert graph.downstream("a") == ("b", "c", "d", "f")
    assert graph.downstream("e") == ("f",)


def test_batches_put_each_task_one_level_after_its_deepest_dependency() -> None:
    # x depends on a root and on the end of a chain: it must wait for the chain.
    graph = graph_of(task("r"), task("c1", "r"), task("c2", "c1"), task("x", "r", "c2"))

    assert graph.parallel_batches() == (("r",), ("c1",), ("c2",), ("x",))


@pytest.mark.parametrize(
    "todos",
    [
        [task("a"), task("b"), task("c", "a"), task("d", "c", "b")],
        [task("a"), task("b", "a"), task("c"), task("d", "b")],
        [task("x"), task("y", "x"), task("z", "x"), task("w", "z", "y"), task("v")],
    ],
    ids=["join", "two-chains", "fork-join-plus-lonely"],
)
def test_input_already_in_dependency_order_comes_back_unchanged(todos: list[ToDo]) -> None:
    assert TaskGraph.from_todos(todos).topological_order() == tuple(t.id for t in todos)


def test_single_task() -> None:
    graph = graph_of(task("only"))

    assert graph.topological_order() == ("only",)
    assert graph.parallel_batches() == (("only",),)
    assert graph.roots() == ("only",)
    assert graph.dependents("only") == ()
    assert graph.dependencies("only") == ()
    assert graph.downstream("only") == ()
    assert graph.ready_after(set(), set()) == ("only",)
    assert graph.ready_after({"only"}, {"only"}) == ()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_dag_order_matches_the_reference_and_batches_are_levels(seed: int) -> None:
    todos = random_dag(300, seed=seed)
    graph = TaskGraph.from_todos(todos)

    assert graph.topological_order() == reference_order(todos)
    level: dict[str, int] = {}
    for n, batch in enumerate(graph.parallel_batches()):
        assert list(batch) == [t.id for t in todos if t.id in set(batch)]
        for task_id in batch:
            level[task_id] = n
    assert len(level) == len(todos)
    for t in todos:
        expected = 1 + max(level[dep] for dep in t.depends_on) if t.depends_on else 0
        assert level[t.id] == expected, t.id


def test_order_is_deterministic_across_builds() -> None:
    orders = {TaskGraph.from_todos(random_dag(500, seed=9)).topological_order() for _ in range(3)}
    batches = {TaskGraph.from_todos(random_dag(500, seed=9)).parallel_batches() for _ in range(3)}

    assert len(orders) == 1
    assert len(batches) == 1


# -- errors -------------------------------------------------------------------------------------


def test_empty_graph() -> None:
    with pytest.raises(InvalidArgument) as caught:
        TaskGraph.from_todos([])

    assert caught.value.reason is Reason.EMPTY_GRAPH
    assert caught.value.field == "todos"
    assert caught.value.message == "a task graph needs at least one task"


@pytest.mark.parametrize(
    ("todos", "field", "message"),
    [
        (
            [task("a"), task("b"), task("a")],
            "todos[2].id",
            "task id 'a' is used by both todos[0] and todos[2]",
        ),
        (
            [task("x"), task("y", "x"), task("y")],
            "todos[2].id",
            "task id 'y' is used by both todos[1] and todos[2]",
        ),
    ],
)
def test_duplicate_task_id(todos: list[ToDo], field: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        TaskGraph.from_todos(todos)

    assert caught.value.reason is Reason.DUPLICATE_TASK_ID
    assert caught.value.field == field
    assert caught.value.message == message


def test_add_task_rejects_a_duplicate_and_keeps_the_graph_usable() -> None:
    graph = TaskGraph()
    graph.add_task(task("a"))
    with pytest.raises(InvalidArgument) as caught:
        graph.add_task(task("a", "a"))

    assert caught.value.reason is Reason.DUPLICATE_TASK_ID
    assert caught.value.field == "todos[1].id"
    graph.add_task(task("b", "a"))
    assert graph.build().topological_order() == ("a", "b")


@pytest.mark.parametrize(
    ("todos", "field", "message"),
    [
        (
            [task("a", "ghost")],
            "todos[0].depends_on[0]",
            "task 'a' depends on unknown task 'ghost'",
        ),
        (
            [task("a"), task("b", "a", "zz")],
            "todos[1].depends_on[1]",
            "task 'b' depends on unknown task 'zz'",
        ),
        (
            [task("a"), task("b", "")],
            "todos[1].depends_on[0]",
            "task 'b' depends on unknown task ''",
        ),
    ],
)
def test_unknown_dependency(todos: list[ToDo], field: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        TaskGraph.from_todos(todos)

    assert caught.value.reason is Reason.UNKNOWN_DEPENDENCY
    assert caught.value.field == field
    assert caught.value.message == message


@pytest.mark.parametrize(
    ("todos", "field", "message"),
    [
        (
            [task("a"), task("b"), task("c", "a", "b", "a")],
            "todos[2].depends_on[2]",
            "task 'c' lists dependency 'a' more than once",
        ),
        # The duplicate is reported even though the entry is also a self-dependency.
        (
            [task("a", "a", "a")],
            "todos[0].depends_on[1]",
            "task 'a' lists dependency 'a' more than once",
        ),
    ],
)
def test_duplicate_depends_on_entry(todos: list[ToDo], field: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        TaskGraph.from_todos(todos)

    assert caught.value.reason is Reason.INVALID_FIELD
    assert caught.value.field == field
    assert caught.value.message == message


@pytest.mark.parametrize(
    ("todos", "cycle", "field"),
    [
        pytest.param(
            [task("a", "b"), task("b", "a")],
            ("a", "b", "a"),
            "todos[1].depends_on[0]",
            id="2-cycle",
        ),
        pytest.param(
            [task("a", "c"), task("b", "a"), task("c", "b")],
            ("a", "c", "b", "a"),
            "todos[1].depends_on[0]",
            id="3-cycle",
        ),
        pytest.param(
            [task("x"), task("a", "x", "a")], ("a", "a"), "todos[1].depends_on[1]", id="self-loop"
        ),
        pytest.param(
            [
                task("r"),
                task("s1", "r"),
                task("s2", "s1"),
                task("t", "q3"),  # downstream of the cycle: the walk starts here
                task("p", "s2", "q3"),
                task("q1", "p"),
                task("q2", "q1"),
                task("q3", "q2"),
                task("u"),
            ],
            ("q3", "q2", "q1", "p", "q3"),
            "todos[4].depends_on[1]",
            id="deep-inside",
        ),
    ],
)
def test_cycle_is_named_as_a_path(todos: list[ToDo], cycle: tuple[str, ...], field: str) -> None:
    with pytest.raises(GraphCycleError) as caught:
        TaskGraph.from_todos(todos)

    error = caught.value
    assert isinstance(error, InvalidArgument)
    assert error.reason is Reason.GRAPH_CYCLE
    assert error.cycle == cycle
    assert error.field == field
    assert error.message == "dependency cycle: " + " -> ".join(cycle)


def test_cycle_error_names_the_edge_that_closes_it() -> None:
    todos = [task("a", "c"), task("b", "a"), task("c", "b")]
    with pytest.raises(GraphCycleError) as caught:
        TaskGraph.from_todos(todos)

    # field todos[i].depends_on[j] must be the last edge of the path: cycle[-2] -> cycle[-1].
    closing_task, closing_dep = caught.value.cycle[-2], caught.value.cycle[-1]
    assert caught.value.field == "todos[1].depends_on[0]"
    assert todos[1].id == closing_task
    assert todos[1].depends_on[0] == closing_dep


@pytest.mark.parametrize(
    ("todos", "reason", "field", "message"),
    [
        ([task("a"), task("")], Reason.MISSING_FIELD, "todos[1].id", "task id is required"),
        (
            [task("a"), task("b", "a"), ToDo(id="c", action="")],
            Reason.MISSING_FIELD,
            "todos[2].action",
            "task 'c' has no action",
        ),
        # Validation runs in request order, so the empty id is found before the duplicate.
        ([task(""), task("")], Reason.MISSING_FIELD, "todos[0].id", "task id is required"),
    ],
)
def test_each_todo_is_validated_with_its_position(
    todos: list[ToDo], reason: Reason, field: str, message: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        TaskGraph.from_todos(todos)

    assert caught.value.reason is reason
    assert caught.value.field == field
    assert caught.value.message == message


@pytest.mark.parametrize("query", ["dependents", "dependencies", "downstream"])
def test_queries_about_an_unknown_task_raise_not_found(query: str) -> None:
    with pytest.raises(NotFound) as caught:
        getattr(diamond(), query)("nope")

    assert caught.value.reason is Reason.TASK_NOT_FOUND
    assert caught.value.message == "task 'nope' is not in this graph"


# -- ready set ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("succeeded", "started", "ready"),
    [
        (set(), set(), ("a",)),
        (set(), {"a"}, ()),
        ({"a"}, {"a"}, ("b", "c")),
        ({"a"}, {"a", "b"}, ("c",)),
        # The join waits for both branches.
        ({"a", "b"}, {"a", "b", "c"}, ()),
        ({"a", "c"}, {"a", "b", "c"}, ()),
        ({"a", "b", "c"}, {"a", "b", "c"}, ("d",)),
        ({"a", "b", "c", "d"}, {"a", "b", "c", "d"}, ()),
    ],
)
def test_ready_after_on_a_diamond(
    succeeded: set[str], started: set[str], ready: tuple[str, ...]
) -> None:
    assert diamond().ready_after(succeeded, started) == ready


def test_ready_after_dispatches_as_soon_as_dependencies_succeed_not_batch_by_batch() -> None:
    # Two chains of different speed: b2 is ready while the slow chain's first step still runs.
    graph = graph_of(task("a1"), task("a2", "a1"), task("b1"), task("b2", "b1"))

    assert graph.ready_after({"b1"}, {"a1", "b1"}) == ("b2",)


def test_ready_after_never_returns_a_task_downstream_of_a_failure() -> None:
    graph = diamond()
    # b failed: c may still run, d never becomes ready.
    assert graph.ready_after({"a"}, {"a", "b"}) == ("c",)
    assert graph.ready_after({"a", "c"}, {"a", "b", "c"}) == ()
    assert graph.downstream("b") == ("d",)


@pytest.mark.parametrize(
    ("finished", "succeeded", "started"),
    [
        ("a", {"a"}, {"a"}),
        ("a", {"a"}, {"a", "c"}),
        ("b", {"a", "b"}, {"a", "b"}),
        ("b", {"a", "b", "c"}, {"a", "b", "c"}),
        ("c", {"a", "b", "c"}, {"a", "b", "c", "d"}),
    ],
)
def test_unblocked_by_agrees_with_ready_after(
    finished: str, succeeded: set[str], started: set[str]
) -> None:
    graph = diamond()
    dependents = set(graph.dependents(finished))
    expected = tuple(t for t in graph.ready_after(succeeded, started) if t in dependents)

    assert graph.unblocked_by(finished, succeeded=succeeded, started=started) == expected


def test_downstream_is_transitive_and_in_topological_order() -> None:
    graph = graph_of(
        task("z", "y"),
        task("root"),
        task("y", "x", "root"),
        task("x", "root"),
        task("side"),
    )

    assert graph.topological_order() == ("root", "x", "y", "z", "side")
    assert graph.downstream("root") == ("x", "y", "z")
    assert graph.downstream("x") == ("y", "z")
    assert graph.downstream("side") == ()


# -- lifecycle and container protocol -----------------------------------------------------------


def test_build_freezes_the_graph_and_is_idempotent() -> None:
    graph = TaskGraph()
    graph.add_task(task("a"))
    assert not graph.is_built

    assert graph.build() is graph
    assert graph.build() is graph
    assert graph.is_built
    with pytest.raises(RuntimeError, match="built and frozen"):
        graph.add_task(task("b"))
    assert len(graph) == 1


@pytest.mark.parametrize(
    "query",
    [
        lambda g: g.topological_order(),
        lambda g: g.parallel_batches(),
        lambda g: g.roots(),
        lambda g: g.ready_after(set(), set()),
        lambda g: g.dependents("a"),
        lambda g: g.downstream("a"),
    ],
)
def test_order_queries_need_a_built_graph(query: object) -> None:
    graph = TaskGraph()
    graph.add_task(task("a"))
    assert callable(query)
    with pytest.raises(RuntimeError, match=r"call build\(\) before"):
        query(graph)


def test_container_protocol() -> None:
    a, b = task("a"), task("b", "a")
    graph = graph_of(a, b)

    assert len(graph) == 2
    assert list(graph) == [a, b]
    assert graph.todos == (a, b)
    assert "a" in graph
    assert "zz" not in graph
    assert b in graph
    assert task("b") not in graph  # same id, different task
    assert 42 not in graph
    assert graph.get("b") is b
    assert graph.get("zz") is None


# -- size ---------------------------------------------------------------------------------------


def test_ten_thousand_task_chain_builds_without_recursion() -> None:
    size = 10_000
    todos = [task(f"t{i}", f"t{i - 1}") if i else task("t0") for i in range(size)]
    graph = TaskGraph.from_todos(reversed(todos))

    assert graph.topological_order() == tuple(f"t{i}" for i in range(size))
    assert len(graph.parallel_batches()) == size
    assert len(graph.downstream("t0")) == size - 1
    assert graph.downstream("t0")[-1] == f"t{size - 1}"


def test_ten_thousand_task_cycle_is_found_without_recursion() -> None:
    size = 10_000
    todos = [task(f"t{i}", f"t{(i + 1) % size}") for i in range(size)]

    with pytest.raises(GraphCycleError) as caught:
        TaskGraph.from_todos(todos)

    assert caught.value.cycle == (*(f"t{i}" for i in range(size)), "t0")
    assert caught.value.field == f"todos[{size - 1}].depends_on[0]"


def test_ordered_todos_follow_topological_order() -> None:
    join = ToDo(id="join", action="noop", depends_on=("left", "right"))
    left = ToDo(id="left", action="noop")
    right = ToDo(id="right", action="noop")
    graph = TaskGraph.from_todos([join, right, left])
    assert graph.ordered_todos() == (right, left, join)
