"""Dispatch: agent sessions, capability matching and the dispatcher that starts attempts."""

from .matching import AgentProfile, Requirement
from .sessions import (
    AgentSession,
    AssignmentMessage,
    CancelMessage,
    ControlMessage,
    Outbound,
    SessionEndMessage,
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
    "ControlMessage",
    "SessionEndMessage",
    "Outbound",
    "SessionRegistry",
]
