"""The progress index of a job: what promotion and the end-of-job check need, kept up to date
by each task transition so that one costs O(its effect), not O(tasks).
"""

from __future__ import annotations

import heapq
from collections import Counter

from .job_types import Task
from .states import ACTIVE_TASK_STATES, TaskState


class ProgressIndex:
    """What promotion and the end-of-job check need, kept up to date by Job._move_task so that
    a transition costs O(its effect), not O(tasks): per-state counts, each task's number of
    dependencies not yet SUCCEEDED, and the PENDING tasks with none left (a heap of insertion
    positions, so they are queued in insertion order as a full scan would; entries that left
    PENDING since are dropped when popped). Built once per aggregate (creation or load).
    """

    __slots__ = ("counts", "dependents", "position", "rank", "ready", "tasks", "unmet")

    def __init__(self, tasks: dict[str, Task], topological_order: tuple[str, ...]) -> None:
        self.tasks = list(tasks.values())
        self.position = {task.id: index for index, task in enumerate(self.tasks)}
        self.rank = {task_id: rank for rank, task_id in enumerate(topological_order)}
        self.dependents: list[list[int]] = [[] for _ in self.tasks]
        self.unmet = [0] * len(self.tasks)
        self.counts: Counter[TaskState] = Counter(task.state for task in self.tasks)
        for index, task in enumerate(self.tasks):
            for dependency in task.todo.depends_on:
                upstream = self.position[dependency]
                self.dependents[upstream].append(index)
                if self.tasks[upstream].state is not TaskState.SUCCEEDED:
                    self.unmet[index] += 1
        self.ready = [
            index
            for index, task in enumerate(self.tasks)
            if task.state is TaskState.PENDING and self.unmet[index] == 0
        ]  # ascending: already a heap

    @property
    def active(self) -> int:
        """Tasks holding a slot of the job's parallelism budget."""
        return sum(self.counts[state] for state in ACTIVE_TASK_STATES)

    def moved(self, task: Task, previous: TaskState) -> None:
        """`task` went from `previous` to its current state."""
        target = task.state
        self.counts[previous] -= 1
        self.counts[target] += 1
        index = self.position[task.id]
        if target is TaskState.SUCCEEDED or previous is TaskState.SUCCEEDED:
            step = -1 if target is TaskState.SUCCEEDED else 1
            for dependent in self.dependents[index]:
                self.unmet[dependent] += step
                if self.unmet[dependent] == 0 and self.tasks[dependent].state is TaskState.PENDING:
                    heapq.heappush(self.ready, dependent)
        if target is TaskState.PENDING and self.unmet[index] == 0:
            heapq.heappush(self.ready, index)

    def requeue_ready(self, indices: list[int]) -> None:
        """Put back ready tasks popped but not queued (they wait for their session)."""
        for index in indices:
            heapq.heappush(self.ready, index)

    def pop_ready(self) -> Task | None:
        """The earliest-inserted PENDING task whose dependencies all succeeded, or None."""
        while self.ready:
            index = heapq.heappop(self.ready)
            task = self.tasks[index]
            if task.state is TaskState.PENDING and self.unmet[index] == 0:
                return task
        return None

    def pending_downstream(self, task_id: str) -> list[Task]:
        """The PENDING tasks downstream of `task_id`, in topological order. The walk stops at
        tasks that are not PENDING: what lies behind them was skipped (or cancelled) with them,
        so a second failure before the same fan-in does not walk its downstream again."""
        found: set[int] = set()
        stack = [self.position[task_id]]
        while stack:
            for dependent in self.dependents[stack.pop()]:
                if dependent not in found and self.tasks[dependent].state is TaskState.PENDING:
                    found.add(dependent)
                    stack.append(dependent)
        downstream = [self.tasks[index] for index in found]
        downstream.sort(key=lambda task: self.rank[task.id])
        return downstream
