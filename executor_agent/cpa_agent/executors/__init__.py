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
from cpa_agent.executors.decorated import FunctionExecutor, executor
from cpa_agent.executors.discovery import (
    ENTRY_POINT_GROUP,
    ExecutorUnavailable,
    discover,
    entry_point_registry,
)
from cpa_agent.executors.params import INVALID_PARAMS
from cpa_agent.executors.registry import ExecutorRegistry

__all__ = [
    # Writing an executor
    "ExecutionContext",
    "Executor",
    "ExecutorError",
    "FunctionExecutor",
    "executor",
    "ArtifactAccess",
    "ArtifactInfo",
    "SecretProvider",
    "INVALID_PARAMS",
    # Offering executors
    "ENTRY_POINT_GROUP",
    "ExecutorUnavailable",
    "ExecutorRegistry",
    "builtin_registry",
    "discover",
    "entry_point_registry",
]
