"""The language-model provider interface the planner and the memory call.

Providers turn their own failures into the typed errors below, so callers decide by kind
(fall back, repair, refuse, retry later) and never by a vendor's exception classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message of a prompt."""

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one call consumed, as the provider reported them (0 when it reports none)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Completion:
    """A free-text answer."""

    text: str
    model: str
    usage: Usage = Usage()


@dataclass(frozen=True, slots=True, kw_only=True)
class StructuredCompletion(Generic[T]):
    """An answer parsed into the schema asked for; `raw` is the text it was parsed from."""

    value: T
    raw: str
    model: str
    usage: Usage = Usage()


@dataclass(frozen=True, slots=True, kw_only=True)
class Embeddings:
    """One vector per text, in the order of the texts, all of the same dimension."""

    vectors: list[list[float]]
    model: str
    usage: Usage = Usage()


class LLMError(Exception):
    """A provider call that gave no usable answer. `retryable`: the same call may succeed
    later (rate limit, outage, timeout); a caller that falls back need not care."""

    retryable = False

    def __init__(self, message: str, *, usage: Usage = Usage()) -> None:
        super().__init__(message)
        self.usage = usage


class LLMRefusedError(LLMError):
    """The model refused to answer (a refusal in the answer, or a content filter)."""


class LLMTruncatedError(LLMError):
    """The answer was cut off at the token limit (finish reason `length`)."""


class LLMBadAnswerError(LLMError):
    """The answer does not parse into the schema asked for (or is empty)."""


class LLMUnavailableError(LLMError):
    """The provider could not be reached or kept failing (429, 5xx, connection) after its
    retries; `retry_after_s` is its hint when it gave one."""

    retryable = True

    def __init__(
        self, message: str, *, usage: Usage = Usage(), retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, usage=usage)
        self.retry_after_s = retry_after_s


class LLMTimeoutError(LLMUnavailableError):
    """The call did not finish within its deadline."""


class LLMNotConfiguredError(LLMError):
    """No provider is configured (or it lacks what the call needs, e.g. embeddings)."""


class LLMProvider(Protocol):
    """A language model: chat completions, structured answers, embeddings.

    Every method raises only LLMError subclasses; `timeout_s` bounds the whole call including
    the provider's retries (None: the provider's configured timeout).
    """

    @property
    def name(self) -> str:
        """The provider's registry name ("openai", "scripted")."""
        ...

    async def generate(
        self, messages: Sequence[Message], *, timeout_s: float | None = None
    ) -> Completion: ...

    async def generate_structured(
        self, messages: Sequence[Message], schema: type[T], *, timeout_s: float | None = None
    ) -> StructuredCompletion[T]: ...

    async def embed(
        self, texts: Sequence[str], *, timeout_s: float | None = None
    ) -> Embeddings: ...

    async def aclose(self) -> None: ...
