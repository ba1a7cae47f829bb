"""Executors run the actions of ToDos; this package holds their protocol, registry and built-ins."""

from cpa_agent.executors.base import (
    ArtifactAccess,
    ArtifactInfo,
    ExecutionContext,
    Executor,
    ExecutorError,
    SecretProvider,
)
from cpa_agent.executors.builtin import builtin_registry
from cpa_agent.executors.registry import ExecutorRegistry

__all__ = [
    # Writing an executor
    "ExecutionContext",
    "Executor",
    "ExecutorError",
    "ArtifactAccess",
    "ArtifactInfo",
    "SecretProvider",
    # Offering executors
    "ExecutorRegistry",
    "builtin_registry",
]
