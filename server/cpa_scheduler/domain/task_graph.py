"""TaskGraph: the ToDos of one job and their depends_on edges, checked by build(), then read-only.

Every walk is iterative and linear in tasks plus edges (the tie-break of the topological order adds
a heap's log factor; the check of inputs walks once per 2048 distinct tasks that inputs take from
beyond a direct dependency), so a 100 000-step plan neither hits the recursion limit nor crawls.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet

from .errors import InvalidArgument, NotFound, Reason, echo
from .todo import ToDo

# Distinct tasks referenced by inputs (beyond direct dependencies) per upstream walk: bounds the
# walk's bit sets to 256 bytes a task.
_UPSTREAM_CHUNK = 2048


class GraphCycleError(InvalidArgument):
    """The tasks depend on each other in a circle.

    `cycle` is the circle as a path that ends where it starts, each arrow reading "depends on":
    ("a", "b", "a") means a depends on b and b on a. `field` names the depends_on entry of the
    path's last edge, the one that closes the circle.
    """

    reason = Reason.GRAPH_CYCLE

    def __init__(self, *, cycle: tuple[str, ...], field: str = "") -> None:
        super().__init__(
            f"dependency cycle: {cycle_text(cycle)}", reason=Reason.GRAPH_CYCLE, field=field
        )
        self.cycle = cycle


# Tasks of a cycle named in its message; a longer cycle shows its first and last ones.
_CYCLE_SHOWN = 8


def cycle_text(cycle: tuple[str, ...]) -> str:
    """`a -> b -> a`; a long cycle as `a -> b -> c -> d -> ... -> y -> z -> a (5000 tasks)`."""
    tasks = len(cycle) - 1  # the path ends where it starts; ids are valid (63 chars at most)
    if tasks <= _CYCLE_SHOWN:
        return " -> ".join(cycle)
    half = _CYCLE_SHOWN // 2
    return f"{' -> '.join([*cycle[:half], '...', *cycle[-half:]])} ({tasks} tasks)"


class TaskGraph:
    """A directed acyclic graph of ToDos; an edge runs from a task to each id in its depends_on.

    Fill it with add_task() (or use from_todos()), then build(): that validates the whole graph and
    freezes it. Queries about order and neighbours need a built graph; field paths in errors
    (`todos[2].depends_on[0]`) count tasks in insertion order, as a request lists them.
    """

    __slots__ = (
        "_batches",
        "_built",
        "_dependents",
        "_index",
        "_order",
        "_position",
        "_roots",
        "_todos",
    )

    def __init__(self) -> None:
        self._todos: list[ToDo] = []
        self._index: dict[str, int] = {}
        self._built = False
        # Filled by build(); adjacency is kept as insertion indices, which are cheap to compare.
        self._dependents: tuple[tuple[int, ...], ...] = ()
        self._order: tuple[str, ...] = ()
        self._position: tuple[int, ...] = ()
        self._batches: tuple[tuple[str, ...], ...] = ()
        self._roots: tuple[str, ...] = ()

    @classmethod
    def from_todos(cls, todos: Iterable[ToDo]) -> TaskGraph:
        """Add every ToDo in order and build: the result is validated and frozen."""
        graph = cls()
        for todo in todos:
            graph.add_task(todo)
        return graph.build()

    # -- building -------------------------------------------------------------------------------

    def add_task(self, todo: ToDo) -> None:
        """Append `todo`; raise InvalidArgument if it is malformed or its id is taken."""
        if self._built:
            raise RuntimeError("the task graph is built and frozen; add tasks before build()")
        position = len(self._todos)
        # Validating here reports errors in request order: an empty id is MISSING_FIELD on the
        # first task rather than a DUPLICATE_TASK_ID on the second.
        todo.validate(f"todos[{position}]")
        first = self._index.get(todo.id)
        if first is not None:
            raise InvalidArgument(
                f"task id {todo.id!r} is used by both todos[{first}] and todos[{position}]",
                reason=Reason.DUPLICATE_TASK_ID,
                field=f"todos[{position}].id",
            )
        self._index[todo.id] = position
        self._todos.append(todo)

    def build(self) -> TaskGraph:
        """Validate the graph (non-empty, dependencies known and unique, no cycle, inputs taken
        from upstream tasks) and freeze it.

        Returns the graph itself; building a built graph again does nothing.
        """
        if self._built:
            return self
        if not self._todos:
            raise InvalidArgument(
                "a task graph needs at least one task", reason=Reason.EMPTY_GRAPH, field="todos"
            )
        deps = self._resolve_dependencies()
        count = len(deps)
        dependents: list[list[int]] = [[] for _ in range(count)]
        for task, task_deps in enumerate(deps):
            for dep in task_deps:
                dependents[dep].append(task)

        # Kahn's algorithm; the heap picks the earliest-inserted ready task, so an input that is
        # already in a valid order comes back unchanged.
        # level[t] (the length of the longest dependency chain ending in t) is final by the time
        # t is popped, because all its dependencies were popped before it.
        unmet = [len(task_deps) for task_deps in deps]
        level = [0] * count
        ready = [task for task in range(count) if unmet[task] == 0]  # ascending: a valid heap
        order: list[int] = []
        while ready:
            task = heapq.heappop(ready)
            order.append(task)
            next_level = level[task] + 1
            for dependent in dependents[task]:
                if level[dependent] < next_level:
                    level[dependent] = next_level
                unmet[dependent] -= 1
                if unmet[dependent] == 0:
                    heapq.heappush(ready, dependent)
        if len(order) < count:
            raise self._cycle_error(deps, unmet)
        self._check_inputs(deps, order)

        batches: list[list[str]] = [[] for _ in range(max(level) + 1)]
        position = [0] * count
        for rank, task in enumerate(order):
            position[task] = rank
        ids = [todo.id for todo in self._todos]
        for task in range(count):
            batches[level[task]].append(ids[task])

        self._dependents = tuple(tuple(d) for d in dependents)
        self._order = tuple(ids[task] for task in order)
        self._position = tuple(position)
        self._batches = tuple(tuple(batch) for batch in batches)
        self._roots = self._batches[0]
        self._built = True
        return self

    def _resolve_dependencies(self) -> list[tuple[int, ...]]:
        resolved: list[tuple[int, ...]] = []
        index = self._index
        for position, todo in enumerate(self._todos):
            depends_on = todo.depends_on
            if len(depends_on) > 1 and len(set(depends_on)) != len(depends_on):
                self._raise_duplicate_dependency(position, todo)
            task_deps: list[int] = []
            for j, dep in enumerate(depends_on):
                dep_position = index.get(dep)
                if dep_position is None:
                    raise InvalidArgument(
                        f"task {todo.id!r} depends on unknown task {echo(dep)}",
                        reason=Reason.UNKNOWN_DEPENDENCY,
                        field=f"todos[{position}].depends_on[{j}]",
                    )
                task_deps.append(dep_position)
            resolved.append(tuple(task_deps))
        return resolved

    @staticmethod
    def _raise_duplicate_dependency(position: int, todo: ToDo) -> None:
        seen: set[str] = set()
        for j, dep in enumerate(todo.depends_on):
            if dep in seen:
                raise InvalidArgument(
                    f"task {todo.id!r} lists dependency {echo(dep)} more than once",
                    reason=Reason.INVALID_FIELD,
                    field=f"todos[{position}].depends_on[{j}]",
                )
            seen.add(dep)

    def _check_inputs(self, deps: list[tuple[int, ...]], order: list[int]) -> None:
        """Every input must name a task upstream of its own: one it depends on, directly or not.

        A direct dependency is checked at once. The others are answered by one walk in
        topological order per `_UPSTREAM_CHUNK` distinct referenced tasks, carrying for each
        task the set (an int used as a bit set) of those referenced tasks that are upstream of
        it: linear in tasks plus edges for the usual plan, and bounded in memory for any.
        The error reported is the first in request order (task position, then input name).
        """
        index = self._index
        far: list[tuple[int, str, int]] = []  # (task, input name, referenced task) to walk for
        first: tuple[int, str, InvalidArgument] | None = None  # found without a walk
        for position, todo in enumerate(self._todos):
            if not todo.inputs:
                continue
            direct = set(deps[position])
            for name in sorted(todo.inputs):  # the order ToDo.validate reports in
                ref = todo.inputs[name]
                target = index.get(ref.task_id)
                if target is None:
                    first = (position, name, self._unknown_input_task(position, name))
                elif target == position:
                    first = (position, name, self._not_upstream(position, name, "its own task"))
                elif target not in direct:
                    far.append((position, name, target))
                if first is not None:
                    break
            if first is not None:
                break  # only inputs listed before it can be reported instead
        not_upstream: list[tuple[int, str]] = []
        targets = sorted({target for _, _, target in far})
        for start in range(0, len(targets), _UPSTREAM_CHUNK):
            bits = {t: 1 << i for i, t in enumerate(targets[start : start + _UPSTREAM_CHUNK])}
            upstream = [0] * len(deps)
            for task in order:
                found = 0
                for dep in deps[task]:
                    found |= upstream[dep] | bits.get(dep, 0)
                upstream[task] = found
            not_upstream.extend(
                (position, name)
                for position, name, target in far
                if target in bits and not upstream[position] & bits[target]
            )
        if not_upstream:
            position, name = min(not_upstream)
            if first is None or (position, name) < first[:2]:
                task_id = self._todos[position].inputs[name].task_id
                raise self._not_upstream(position, name, f"task {echo(task_id)}")
        if first is not None:
            raise first[2]

    def _unknown_input_task(self, position: int, name: str) -> InvalidArgument:
        todo = self._todos[position]
        return InvalidArgument(
            f"task {todo.id!r}: input {name!r} takes an output of unknown task "
            f"{echo(todo.inputs[name].task_id)}",
            reason=Reason.UNKNOWN_DEPENDENCY,
            field=f"todos[{position}].inputs[{name}].task_id",
        )

    def _not_upstream(self, position: int, name: str, what: str) -> InvalidArgument:
        todo = self._todos[position]
        return InvalidArgument(
            f"task {todo.id!r}: input {name!r} takes an output of {what}, which is not upstream "
            f"of it; an input may only name a task that {todo.id!r} depends on, directly or "
            "through depends_on of its dependencies",
            field=f"todos[{position}].inputs[{name}].task_id",
        )

    def _cycle_error(self, deps: list[tuple[int, ...]], unmet: list[int]) -> GraphCycleError:
        # Every task Kahn could not emit still waits for another such task, so following those
        # waits from any of them must come back to a task already on the path: that is a cycle.
        node = next(task for task, waits in enumerate(unmet) if waits)
        seen_at: dict[int, int] = {}
        path: list[int] = []
        via: list[int] = []  # via[k]: index in path[k]'s depends_on of the edge to path[k + 1]
        while node not in seen_at:
            seen_at[node] = len(path)
            path.append(node)
            j = next(j for j, dep in enumerate(deps[node]) if unmet[dep])
            via.append(j)
            node = deps[node][j]
        ids = [self._todos[task].id for task in path[seen_at[node] :]]
        return GraphCycleError(
            cycle=(*ids, self._todos[node].id),
            field=f"todos[{path[-1]}].depends_on[{via[-1]}]",
        )

    # -- queries --------------------------------------------------------------------------------

    @property
    def is_built(self) -> bool:
        return self._built

    @property
    def todos(self) -> tuple[ToDo, ...]:
        """All tasks in insertion order."""
        return tuple(self._todos)

    def get(self, task_id: str) -> ToDo | None:
        """The task with `task_id`, or None."""
        position = self._index.get(task_id)
        return None if position is None else self._todos[position]

    def topological_order(self) -> tuple[str, ...]:
        """Every task id after all its dependencies; ties go to the task inserted first."""
        self._require_built()
        return self._order

    def ordered_todos(self) -> tuple[ToDo, ...]:
        """The tasks themselves in topological_order()."""
        self._require_built()
        return tuple(self._todos[self._index[task_id]] for task_id in self._order)

    def parallel_batches(self) -> tuple[tuple[str, ...], ...]:
        """Kahn levels: batch n holds tasks whose longest dependency chain has n edges.

        Each batch can run in parallel once the batches before it are done; within a batch ids keep
        insertion order.
        """
        self._require_built()
        return self._batches

    def roots(self) -> tuple[str, ...]:
        """Tasks without dependencies, in insertion order."""
        self._require_built()
        return self._roots

    def dependencies(self, task_id: str) -> tuple[str, ...]:
        """What `task_id` depends on directly, in its depends_on order."""
        position = self._lookup(task_id)
        return self._todos[position].depends_on

    def dependents(self, task_id: str) -> tuple[str, ...]:
        """Tasks that depend directly on `task_id`, in insertion order."""
        position = self._lookup(task_id)
        return tuple(self._todos[task].id for task in self._dependents[position])

    def downstream(self, task_id: str) -> tuple[str, ...]:
        """Every task that depends on `task_id`, directly or not, in topological order.

        These are the tasks to mark SKIPPED when `task_id` fails for good.
        """
        start = self._lookup(task_id)
        found: set[int] = set()
        stack = [start]
        while stack:
            for dependent in self._dependents[stack.pop()]:
                if dependent not in found:
                    found.add(dependent)
                    stack.append(dependent)
        position = self._position
        return tuple(self._todos[task].id for task in sorted(found, key=position.__getitem__))

    def ready_after(
        self, succeeded: AbstractSet[str], started: AbstractSet[str]
    ) -> tuple[str, ...]:
        """Tasks not yet started whose dependencies have all succeeded, in insertion order.

        `started` holds every task that has left PENDING (queued, running, finished or skipped);
        a task in `succeeded` is never returned either. This scans the whole graph: after a single
        task succeeds, `unblocked_by` gives the same answer for its dependents in O(their edges).
        """
        self._require_built()
        return tuple(
            todo.id
            for todo in self._todos
            if todo.id not in started
            and todo.id not in succeeded
            and all(dep in succeeded for dep in todo.depends_on)
        )

    def unblocked_by(
        self, task_id: str, *, succeeded: AbstractSet[str], started: AbstractSet[str]
    ) -> tuple[str, ...]:
        """Direct dependents of `task_id` that `ready_after(succeeded, started)` would return."""
        position = self._lookup(task_id)
        candidates = (self._todos[task] for task in self._dependents[position])
        return tuple(
            todo.id
            for todo in candidates
            if todo.id not in started
            and todo.id not in succeeded
            and all(dep in succeeded for dep in todo.depends_on)
        )

    def _require_built(self) -> None:
        if not self._built:
            raise RuntimeError("call build() before querying the task graph")

    def _lookup(self, task_id: str) -> int:
        self._require_built()
        position = self._index.get(task_id)
        if position is None:
            raise NotFound(
                f"task {echo(task_id)} is not in this graph", reason=Reason.TASK_NOT_FOUND
            )
        return position

    # -- container protocol ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._todos)

    def __iter__(self) -> Iterator[ToDo]:
        """Tasks in insertion order."""
        return iter(tuple(self._todos))

    def __contains__(self, item: object) -> bool:
        """True for the id of a task in the graph, or for a ToDo equal to the one stored."""
        if isinstance(item, str):
            return item in self._index
        if isinstance(item, ToDo):
            position = self._index.get(item.id)
            return position is not None and self._todos[position] == item
        return False

    def __repr__(self) -> str:
        state = "built" if self._built else "open"
        return f"<TaskGraph {len(self._todos)} tasks, {state}>"
