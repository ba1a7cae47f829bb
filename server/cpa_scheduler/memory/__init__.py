"""Context memory: short-term per conversation, long-term semantic memory of finished jobs."""

from __future__ import annotations

from .interface import (
    ConversationEntry,
    ConversationMemory,
    MemoryHit,
    MemoryRecord,
    Outcome,
    Selection,
    SemanticMemory,
)

__all__ = [
    "ConversationEntry",
    "ConversationMemory",
    "MemoryHit",
    "MemoryRecord",
    "Outcome",
    "Selection",
    "SemanticMemory",
]
