"""LLM errors at the API edge: one mapping from the providers' typed errors to domain errors
(ErrorReason 170-174; their proto comments say when each is sent)."""

from __future__ import annotations

from ..domain import DomainError, FailedPrecondition, Reason
from .interface import (
    LLMBadAnswerError,
    LLMError,
    LLMNotConfiguredError,
    LLMRefusedError,
    LLMTruncatedError,
    LLMUnavailableError,
)

# Most specific first: LLMTimeoutError is an LLMUnavailableError, ScriptError an
# LLMNotConfiguredError.
_KINDS: tuple[tuple[type[LLMError], Reason], ...] = (
    (LLMUnavailableError, Reason.LLM_UNAVAILABLE),
    (LLMRefusedError, Reason.LLM_REFUSED),
    (LLMTruncatedError, Reason.LLM_OUTPUT_TRUNCATED),
    (LLMBadAnswerError, Reason.LLM_BAD_ANSWER),
    (LLMNotConfiguredError, Reason.LLM_NOT_CONFIGURED),
)
_SUMMARIES = {
    Reason.LLM_UNAVAILABLE: "the language model is unavailable",
    Reason.LLM_REFUSED: "the language model refused to answer",
    Reason.LLM_OUTPUT_TRUNCATED: "the language model's answer was cut off at its token limit",
    Reason.LLM_BAD_ANSWER: "the language model's answer is unusable",
    Reason.LLM_NOT_CONFIGURED: "no usable language model",
}


def _reason(error: LLMError) -> Reason:
    for kind, reason in _KINDS:
        if isinstance(error, kind):
            return reason
    # An LLMError of no known kind: by whether the same call may succeed later.
    return Reason.LLM_UNAVAILABLE if error.retryable else Reason.LLM_BAD_ANSWER


def as_domain_error(error: LLMError, field: str) -> DomainError:
    """The domain error for a provider's `error` while planning the request's `field`.

    LLM_UNAVAILABLE (UNAVAILABLE, the provider's retry_after_s as the RetryInfo delay) for
    retryable errors; otherwise FAILED_PRECONDITION with the reason of the error's kind.
    """
    reason = _reason(error)
    summary = _SUMMARIES[reason]
    message = f"{summary}: {error}" if str(error) else summary
    if reason is Reason.LLM_UNAVAILABLE:
        unavailable = DomainError(message, reason=reason, field=field)
        unavailable.retry_delay_s = getattr(error, "retry_after_s", None)
        return unavailable
    return FailedPrecondition(message, reason=reason, field=field)
