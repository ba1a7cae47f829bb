"""Executors found through the `cpa.executors` entry-point group, so that a package adds actions
to the agent without touching ours.

The contract (docs/EXECUTOR_GUIDE.md, "Shipping an executor"):
- An entry point of the group names a factory: a callable taking no arguments and returning an
  iterable of executors. It reads its own settings (environment variables, files).
- A factory that cannot serve here (wrong platform, a browser or a library missing, settings
  absent) raises ExecutorUnavailable(reason): the agent logs the reason and advertises none of
  its actions. Any other exception is logged with its traceback and treated the same, so one
  broken package never stops the agent.
- The agent setting CPA_AGENT_EXECUTORS chooses which entry points load, by name ("builtin",
  "browser", "mail"); empty: all of them.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cpa_agent.executors.base import Executor
from cpa_agent.executors.registry import ExecutorRegistry

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "cpa.executors"
BUILTIN_ENTRY_POINT = "builtin"
BUILTIN_FACTORY = "cpa_agent.executors.builtin:executors"


class ExecutorUnavailable(Exception):  # noqa: N818 (a state, not a failure of the caller)
    """Raised by an entry point's factory (or returned by an executor's optional
    `unavailable_reason()`) when its actions cannot run on this agent; `reason` says why, for
    the log: "Chromium not found at /usr/bin/chromium", "UI Automation needs Windows"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class Unavailable:
    """An entry point that contributed nothing, and why."""

    name: str
    reason: str


@dataclass(kw_only=True)
class Discovery:
    """What loading the entry points gave: the registry and the entry points left out."""

    registry: ExecutorRegistry
    loaded: list[str] = field(default_factory=list)
    unavailable: list[Unavailable] = field(default_factory=list)


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    found = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    if not any(point.name == BUILTIN_ENTRY_POINT for point in found):
        # Our own package run from a source tree whose installed metadata predates the entry
        # point (or not installed at all): the built-ins are ours, so they are always found.
        found.append(
            importlib.metadata.EntryPoint(
                name=BUILTIN_ENTRY_POINT, value=BUILTIN_FACTORY, group=ENTRY_POINT_GROUP
            )
        )
    # One entry point per name: the first distribution on sys.path wins, as for imports.
    unique: dict[str, importlib.metadata.EntryPoint] = {}
    for point in found:
        unique.setdefault(point.name, point)
    return [unique[name] for name in sorted(unique)]


def _load(point: importlib.metadata.EntryPoint) -> list[Executor]:
    factory: Callable[[], Iterable[Executor]] = point.load()
    return list(factory())


def discover(selected: Sequence[str] = ()) -> Discovery:
    """Loads the entry points of the group (only those named in `selected`, if any) into one
    registry. An unknown name in `selected` is a ValueError (a typo must not start an agent
    without the actions it was meant to have); an action two entry points both offer is a
    ValueError too."""
    points = _entry_points()
    if selected:
        names = {point.name for point in points}
        unknown = sorted(set(selected) - names)
        if unknown:
            raise ValueError(
                f"CPA_AGENT_EXECUTORS names {', '.join(unknown)}, which no installed package "
                f"offers in entry-point group {ENTRY_POINT_GROUP!r} (found: "
                f"{', '.join(sorted(names)) or 'none'})"
            )
        points = [point for point in points if point.name in selected]
    result = Discovery(registry=ExecutorRegistry())
    for point in points:
        try:
            executors = _load(point)
        except ExecutorUnavailable as unavailable:
            logger.warning("executors %r unavailable: %s", point.name, unavailable.reason)
            result.unavailable.append(Unavailable(name=point.name, reason=unavailable.reason))
            continue
        except Exception as error:
            logger.exception("executors %r (%s) failed to load", point.name, point.value)
            result.unavailable.append(
                Unavailable(name=point.name, reason=f"{type(error).__name__}: {error}")
            )
            continue
        for executor in executors:
            result.registry.register(executor)
        result.loaded.append(point.name)
        logger.info(
            "executors %r: %s",
            point.name,
            ", ".join(sorted(executor.action for executor in executors)) or "no actions",
        )
    return result


def entry_point_registry(selected: Sequence[str] = ()) -> ExecutorRegistry:
    """The registry of the entry points (see discover)."""
    return discover(selected).registry
