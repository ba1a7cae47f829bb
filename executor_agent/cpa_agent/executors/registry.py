"""The executors an agent offers, keyed by action name; its action list goes into the hello."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from cpa_agent.executors.base import Executor

logger = logging.getLogger(__name__)


def unavailable_reason(executor: Executor) -> str | None:
    """Why the executor cannot run now (its optional `unavailable_reason()`), or None. An
    executor whose check raises counts as unavailable, with the exception as the reason."""
    check = getattr(executor, "unavailable_reason", None)
    if check is None:
        return None
    try:
        reason = check()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None if reason is None else str(reason)


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
        """Registered action names, sorted."""
        return sorted(self._executors)

    def unavailable(self) -> dict[str, str]:
        """Registered actions whose executor says it cannot run now, with the reason."""
        reasons = {}
        for action, executor in self._executors.items():
            reason = unavailable_reason(executor)
            if reason is not None:
                reasons[action] = reason
        return reasons

    def advertised_actions(self) -> list[str]:
        """The actions the hello offers, sorted (stable hellos): the registered ones whose
        executor is available."""
        unavailable = self.unavailable()
        for action, reason in sorted(unavailable.items()):
            logger.warning("not offering %r: %s", action, reason)
        return sorted(set(self._executors) - set(unavailable))

    def capabilities(self, actions: Iterable[str]) -> list[str]:
        """The union of the optional `capabilities` of the executors of `actions`, sorted."""
        found: set[str] = set()
        for action in actions:
            found.update(getattr(self._executors[action], "capabilities", ()) or ())
        return sorted(found)

    def executors(self) -> list[Executor]:
        """The registered executors, in registration order (one per action)."""
        return list(self._executors.values())

    def __contains__(self, action: object) -> bool:
        return action in self._executors

    def __len__(self) -> int:
        return len(self._executors)
