"""CPA executor agent: connects to the scheduler over ExecutorService.Connect and runs ToDos.

Depends on the generated contract (`cpa.*.v1`) only, never on the scheduler's code.
"""

from cpa_agent._version import __version__
from cpa_agent.agent import Agent
from cpa_agent.executors import (
    ExecutionContext,
    Executor,
    ExecutorError,
    ExecutorRegistry,
    ExecutorUnavailable,
    builtin_registry,
    entry_point_registry,
    executor,
)
from cpa_agent.runner import AttemptKey
from cpa_agent.settings import AgentSettings

__all__ = [
    # Running an agent
    "Agent",
    "AgentSettings",
    "AttemptKey",
    # Writing and offering executors
    "ExecutionContext",
    "Executor",
    "ExecutorError",
    "ExecutorRegistry",
    "ExecutorUnavailable",
    "builtin_registry",
    "entry_point_registry",
    "executor",
    # Metadata
    "__version__",
]
