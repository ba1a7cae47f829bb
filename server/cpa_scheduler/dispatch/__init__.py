"""Dispatch: agent sessions, capability matching and the dispatcher that starts attempts."""

from .matching import AgentProfile, Requirement
from .sessions import (
    AgentSession,
    AssignmentMessage,
    CancelMessage,
    Outbound,
    SessionRegistry,
)

__all__ = [
    # Matching
    "AgentProfile",
    "Requirement",
    # Sessions
    "AgentSession",
    "AssignmentMessage",
    "CancelMessage",
    "Outbound",
    "SessionRegistry",
]
