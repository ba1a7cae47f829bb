"""RetryCallbacks' request checks: each refusal names the field RetryCallbacksRequest's comment
gives, before the outbox is asked anything."""

from __future__ import annotations

from typing import Any, cast

import pytest

from cpa.scheduler.v1 import callback_pb2
from cpa_scheduler.api.callback_calls import retry_callbacks
from cpa_scheduler.callbacks.outbox import CallbackOutbox
from cpa_scheduler.domain import InvalidArgument


class _UntouchedOutbox:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a refused request reached the outbox ({name})")


@pytest.mark.parametrize(
    ("request_", "reason", "field"),
    [
        (callback_pb2.RetryCallbacksRequest(), "MISSING_FIELD", "delivery_ids"),
        (
            callback_pb2.RetryCallbacksRequest(delivery_ids=["a"], all_dead=True),
            "INVALID_FIELD",
            "all_dead",
        ),
        # Too many ids: the list is at fault, as BatchScheduleJobs' `requests`.
        (
            callback_pb2.RetryCallbacksRequest(delivery_ids=["a"] * 1001),
            "INVALID_FIELD",
            "delivery_ids",
        ),
        (
            callback_pb2.RetryCallbacksRequest(delivery_ids=["a", ""]),
            "INVALID_FIELD",
            "delivery_ids[1]",
        ),
        (
            callback_pb2.RetryCallbacksRequest(delivery_ids=["a"], max_callbacks=5),
            "INVALID_FIELD",
            "max_callbacks",
        ),
        (
            callback_pb2.RetryCallbacksRequest(all_dead=True, max_callbacks=1001),
            "INVALID_FIELD",
            "max_callbacks",
        ),
    ],
)
async def test_a_bad_retry_request_names_its_field(
    request_: callback_pb2.RetryCallbacksRequest, reason: str, field: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await retry_callbacks(
            request_, tenant="t", outbox=cast("CallbackOutbox", _UntouchedOutbox())
        )
    assert (raised.value.reason.value, raised.value.field) == (reason, field)
