"""Executors run the actions of ToDos; this package holds their protocol, registry and built-ins."""

from cpa_agent.executors.base import ExecutionContext, Executor, ExecutorError
from cpa_agent.executors.builtin import builtin_registry
from cpa_agent.executors.registry import ExecutorRegistry

__all__ = [
    # Writing an executor
    "ExecutionContext",
    "Executor",
    "ExecutorError",
    # Offering executors
    "ExecutorRegistry",
    "builtin_registry",
]
