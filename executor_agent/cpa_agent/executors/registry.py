"""The executors an agent offers, keyed by action name; its action list goes into the hello."""

from __future__ import annotations

from collections.abc import Iterable

from cpa_agent.executors.base import Executor


class ExecutorRegistry:
    """Executors by action name; an action is registered at most once."""

    def __init__(self, *, executors: Iterable[Executor] = ()) -> None:
        self._executors: dict[str, Executor] = {}
        for executor in executors:
            self.register(executor)

    def register(self, executor: Executor) -> None:
        """Adds an executor; a second one for the same action is a ValueError."""
        action = executor.action
        if not action:
            raise ValueError("an executor needs a non-empty action name")
        if action in self._executors:
            raise ValueError(f"action {action!r} is already registered")
        self._executors[action] = executor

    def get(self, action: str) -> Executor | None:
        return self._executors.get(action)

    def actions(self) -> list[str]:
        """Registered action names, sorted (stable hellos)."""
        return sorted(self._executors)

    def __contains__(self, action: object) -> bool:
        return action in self._executors

    def __len__(self) -> int:
        return len(self._executors)
