"""Language-model providers: one interface (interface.LLMProvider), typed errors, and the
providers behind it (OpenAI-compatible servers, a scripted provider for demos and tests)."""

from __future__ import annotations

from .interface import (
    Completion,
    Embeddings,
    LLMBadAnswerError,
    LLMError,
    LLMNotConfiguredError,
    LLMProvider,
    LLMRefusedError,
    LLMTimeoutError,
    LLMTruncatedError,
    LLMUnavailableError,
    Message,
    StructuredCompletion,
    Usage,
)

__all__ = ["Completion", "Embeddings", "LLMProvider", "Message", "StructuredCompletion", "Usage"]
__all__ += [
    "LLMBadAnswerError",
    "LLMError",
    "LLMNotConfiguredError",
    "LLMRefusedError",
    "LLMTimeoutError",
    "LLMTruncatedError",
    "LLMUnavailableError",
]
