"""Prints how long TaskGraph takes to build and query large graphs (a chain and a wide random DAG).

Run: PYTHONPATH=server .venv/bin/python bench/bench_task_graph.py [sizes...]
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable

from cpa_scheduler.domain import TaskGraph, ToDo

REPEATS = 3


def chain(size: int) -> list[ToDo]:
    return [
        ToDo(id=f"t{i}", action="click", depends_on=(f"t{i - 1}",) if i else ())
        for i in range(size)
    ]


def wide_dag(size: int, *, max_deps: int = 3, seed: int = 7) -> list[ToDo]:
    """Each task depends on up to `max_deps` random earlier tasks; the list is then shuffled."""
    rng = random.Random(seed)
    todos = []
    for i in range(size):
        deps = rng.sample(range(i), k=min(i, rng.randint(0, max_deps)))
        todos.append(ToDo(id=f"t{i}", action="click", depends_on=tuple(f"t{d}" for d in deps)))
    rng.shuffle(todos)
    return todos


def best_ms(work: Callable[[], object]) -> float:
    """The fastest of REPEATS runs, in milliseconds (the least disturbed by the rest of the box)."""
    runs = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        work()
        runs.append(time.perf_counter() - start)
    return min(runs) * 1000


def report(shape: str, todos: list[ToDo]) -> None:
    edges = sum(len(todo.depends_on) for todo in todos)
    build_ms = best_ms(lambda: TaskGraph.from_todos(todos).topological_order())
    graph = TaskGraph.from_todos(todos)
    root = "t0"  # the oldest task: the most tasks downstream of it
    ready_ms = best_ms(lambda: graph.ready_after(set(), set()))
    downstream_ms = best_ms(lambda: graph.downstream(root))
    print(
        f"{shape:>8} {len(todos):>7} tasks {edges:>7} edges: "
        f"add+build+sort {build_ms:7.1f} ms, ready_after {ready_ms:6.1f} ms, "
        f"downstream(t0) {downstream_ms:6.1f} ms ({len(graph.downstream(root))} tasks), "
        f"{len(graph.parallel_batches())} batches"
    )


def main(sizes: list[int]) -> None:
    for size in sizes:
        report("chain", chain(size))
        report("wide DAG", wide_dag(size))


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [10_000, 100_000])
