"""ListCallbacks and RetryCallbacks: requests checked, the outbox called, deliveries converted
(this component's conversion between storage records and protobuf)."""

from __future__ import annotations

from cpa.scheduler.v1 import callback_pb2
from cpa_scheduler.callbacks.outbox import CallbackOutbox
from cpa_scheduler.domain import AuditCall, InvalidArgument, PagePosition, Reason
from cpa_scheduler.storage import CallbackDelivery, CallbackPosition, CallbackState

from .ids import bounded_id
from .page_token import PageTokens, TokenKind, fingerprint_query, page_size

_PAGE_DEFAULT = 100
_PAGE_MAX = 1000
_RETRY_DEFAULT = 100
_RETRY_MAX = 1000

_STATES = {
    callback_pb2.CALLBACK_STATE_PENDING: CallbackState.PENDING,
    callback_pb2.CALLBACK_STATE_DELIVERED: CallbackState.DELIVERED,
    callback_pb2.CALLBACK_STATE_DEAD: CallbackState.DEAD,
}
_STATE_VALUES = {state: value for value, state in _STATES.items()}


def callback_to_proto(delivery: CallbackDelivery) -> callback_pb2.Callback:
    message = callback_pb2.Callback(
        delivery_id=delivery.delivery_id,
        message_id=delivery.message_id,
        job_id=delivery.job_id,
        event_type=delivery.event_type,
        url=delivery.url,
        state=_STATE_VALUES[delivery.state],
        attempts=delivery.attempts,
        last_error=delivery.last_error,
    )
    if delivery.state is CallbackState.PENDING:
        message.next_attempt_time.FromDatetime(delivery.next_attempt_time)
    message.create_time.FromDatetime(delivery.create_time)
    message.update_time.FromDatetime(delivery.update_time)
    return message


def _state_of(value: int) -> CallbackState | None:
    if value == callback_pb2.CALLBACK_STATE_UNSPECIFIED:
        return None
    state: CallbackState | None = _STATES.get(value)  # type: ignore[call-overload]
    if state is None:
        raise InvalidArgument(f"state {value} is not a CallbackState", field="state")
    return state


def _check_id(value: str, field: str) -> None:
    # Empty is INVALID_FIELD here (not MISSING_FIELD): an empty entry of a list the call names.
    if not value:
        raise InvalidArgument(f"{field} must not be empty", field=field)
    bounded_id(value, field)


async def list_callbacks(
    request: callback_pb2.ListCallbacksRequest,
    *,
    tenant: str,
    outbox: CallbackOutbox,
    page_tokens: PageTokens,
) -> callback_pb2.ListCallbacksResponse:
    state = _state_of(request.state)
    if request.job_id:
        _check_id(request.job_id, "job_id")
    limit = page_size(request.page_size, default=_PAGE_DEFAULT, maximum=_PAGE_MAX)
    query = fingerprint_query("callbacks", state.value if state else "", request.job_id)
    after = None
    if request.page_token:
        position = page_tokens.time_id_position(
            request.page_token, tenant=tenant, query_fingerprint=query, kind=TokenKind.CALLBACKS
        )
        after = CallbackPosition(position.create_time, position.job_id)
    # One more than the page: whether a next page exists without an empty last page.
    found = await outbox.deliveries(
        tenant, state=state, job_id=request.job_id, after=after, limit=limit + 1
    )
    page = found[:limit]
    response = callback_pb2.ListCallbacksResponse(callbacks=[callback_to_proto(d) for d in page])
    if len(found) > limit:
        last = page[-1]
        response.next_page_token = page_tokens.time_id_token(
            PagePosition(create_time=last.create_time, job_id=last.delivery_id),
            tenant=tenant,
            query_fingerprint=query,
            kind=TokenKind.CALLBACKS,
        )
    return response


async def retry_callbacks(
    request: callback_pb2.RetryCallbacksRequest,
    *,
    tenant: str,
    outbox: CallbackOutbox,
    audit: AuditCall | None = None,
) -> callback_pb2.RetryCallbacksResponse:
    ids = list(request.delivery_ids)
    if ids and request.all_dead:
        raise InvalidArgument("set delivery_ids or all_dead, not both", field="all_dead")
    if request.max_callbacks and not request.all_dead:
        raise InvalidArgument("max_callbacks goes with all_dead", field="max_callbacks")
    if request.all_dead:
        if not 0 <= request.max_callbacks <= _RETRY_MAX:
            raise InvalidArgument(
                f"max_callbacks must be 0-{_RETRY_MAX}, got {request.max_callbacks}",
                field="max_callbacks",
            )
        redriven = await outbox.retry_all_dead(
            tenant, limit=request.max_callbacks or _RETRY_DEFAULT, audit=audit
        )
    else:
        if not ids:
            raise InvalidArgument(
                "name the deliveries (delivery_ids) or set all_dead",
                reason=Reason.MISSING_FIELD,
                field="delivery_ids",
            )
        if len(ids) > _RETRY_MAX:
            # The list is at fault, not an entry: named as BatchScheduleJobs names `requests`.
            raise InvalidArgument(
                f"at most {_RETRY_MAX} delivery ids per call, got {len(ids)}",
                field="delivery_ids",
            )
        for index, delivery_id in enumerate(ids):
            _check_id(delivery_id, f"delivery_ids[{index}]")
        redriven = await outbox.retry(tenant, ids, audit=audit)
    return callback_pb2.RetryCallbacksResponse(callbacks=[callback_to_proto(d) for d in redriven])
