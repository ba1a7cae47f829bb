"""Provider errors at the API edge: reason, gRPC status, field, RetryInfo."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from cpa_scheduler.api.errors import retry_after_header, status_for
from cpa_scheduler.domain import Reason
from cpa_scheduler.llm import (
    LLMBadAnswerError,
    LLMError,
    LLMNotConfiguredError,
    LLMRefusedError,
    LLMTimeoutError,
    LLMTruncatedError,
    LLMUnavailableError,
)
from cpa_scheduler.llm.errors import as_domain_error
from cpa_scheduler.llm.scripted import ScriptError

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


class OddRetryableError(LLMError):
    retryable = True


@pytest.mark.parametrize(
    ("error", "reason", "code"),
    [
        (LLMRefusedError("no"), Reason.LLM_REFUSED, FAILED_PRECONDITION),
        (LLMTruncatedError("cut"), Reason.LLM_OUTPUT_TRUNCATED, FAILED_PRECONDITION),
        (LLMBadAnswerError("junk"), Reason.LLM_BAD_ANSWER, FAILED_PRECONDITION),
        (LLMNotConfiguredError("none"), Reason.LLM_NOT_CONFIGURED, FAILED_PRECONDITION),
        (ScriptError("s.yaml:3: x"), Reason.LLM_NOT_CONFIGURED, FAILED_PRECONDITION),
        (LLMUnavailableError("503"), Reason.LLM_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
        (LLMTimeoutError("slow"), Reason.LLM_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
        (LLMError("other"), Reason.LLM_BAD_ANSWER, FAILED_PRECONDITION),
        (OddRetryableError("other"), Reason.LLM_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_each_kind_has_its_reason_and_status(
    error: LLMError, reason: Reason, code: grpc.StatusCode
) -> None:
    domain = as_domain_error(error, "spec.text")
    assert domain.reason is reason
    assert domain.field == "spec.text"
    assert str(error) in domain.message
    got, status = status_for(domain)
    assert got is code
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert (info.reason, info.metadata["field"]) == (reason.value, "spec.text")
    # The field is well-formed text: no BadRequest (that would blame the caller's input).
    assert [d.TypeName() for d in status.details] == ["google.rpc.ErrorInfo"]


def test_the_providers_retry_hint_becomes_retry_info_and_retry_after() -> None:
    domain = as_domain_error(LLMUnavailableError("429", retry_after_s=2.5), "text")
    code, status = status_for(domain)
    assert code is grpc.StatusCode.UNAVAILABLE
    retry = error_details_pb2.RetryInfo()
    assert status.details[1].Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == 2500
    assert retry_after_header(domain) == "3"


def test_no_hint_no_retry_info() -> None:
    domain = as_domain_error(LLMTimeoutError("no answer within 5 s"), "text")
    _, status = status_for(domain)
    assert [d.TypeName() for d in status.details] == ["google.rpc.ErrorInfo"]
    assert retry_after_header(domain) is None
