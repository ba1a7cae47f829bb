"""AgentFilter: which agents a list asks for, and the test whether one agent matches it.

Pure data; the API parses it from an AIP-160 string and the dispatcher's registry applies it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class AgentState(StrEnum):
    """Connection state of an executor agent; mirrors `cpa.scheduler.v1.AgentState`."""

    CONNECTED = "CONNECTED"
    DRAINING = "DRAINING"
    DISCONNECTED = "DISCONNECTED"


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentFilter:
    """Conditions ANDed together; an empty filter matches every agent.

    `states` is a set of alternatives (any one matches); `actions` and `capabilities` must all be
    present on the agent; `labels` must all be present with exactly these values.
    """

    states: frozenset[AgentState] = frozenset()
    actions: frozenset[str] = frozenset()
    capabilities: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)

    def matches(
        self,
        state: str,
        actions: Collection[str],
        capabilities: Collection[str],
        labels: Mapping[str, str],
    ) -> bool:
        """Whether an agent in `state` with these actions, capabilities and labels matches."""
        if self.states and state not in self.states:
            return False
        if not self.actions.issubset(actions):
            return False
        if not self.capabilities.issubset(capabilities):
            return False
        return all(labels.get(key) == value for key, value in self.labels.items())
