"""cpa_client.agent_stream: how both ends of the agent stream batch what waits, by bytes."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from cpa.executor.v1 import executor_service_pb2 as pb
from cpa_client.agent_stream import (
    BATCH_ENVELOPE_BYTES,
    MAX_BATCH_MESSAGES,
    batched_size,
    batches,
)


def _wrap(requests: list[pb.ConnectRequest]) -> pb.ConnectRequest:
    return pb.ConnectRequest(batch=pb.RequestBatch(requests=requests))


def _progress(size: int, n: int = 0) -> pb.ConnectRequest:
    return pb.ConnectRequest(
        report_id=n + 1, progress=pb.Progress(job_id=f"job-{n}", message="x" * size)
    )


def _flat(sent: list[pb.ConnectRequest]) -> list[pb.ConnectRequest]:
    return [r for m in sent for r in (m.batch.requests if m.HasField("batch") else [m])]


async def _drain(queued: list[pb.ConnectRequest | None], *, limit: int) -> list[pb.ConnectRequest]:
    queue: asyncio.Queue[pb.ConnectRequest | None] = asyncio.Queue()
    for message in queued:
        queue.put_nowait(message)
    return [m async for m in batches(queue, batch_bytes=lambda: limit, wrap=_wrap)]


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=40),
    limit=st.integers(min_value=64, max_value=8000),
)
@settings(max_examples=200, deadline=None)
def test_batches_fit_the_budget_and_keep_every_message_in_order(
    sizes: list[int], limit: int
) -> None:
    queued = [_progress(size, n) for n, size in enumerate(sizes)]

    sent = asyncio.run(_drain([*queued, None], limit=limit))

    assert _flat(sent) == queued
    for message in sent:
        # Only a message too large for any batch goes over the budget, and then alone.
        assert message.ByteSize() <= limit or not message.HasField("batch")
        if message.HasField("batch"):
            assert len(message.batch.requests) <= MAX_BATCH_MESSAGES


@given(sizes=st.lists(st.integers(min_value=0, max_value=300_000), min_size=1, max_size=5))
def test_the_batch_arithmetic_matches_the_encoding(sizes: list[int]) -> None:
    requests = [_progress(size, n) for n, size in enumerate(sizes)]
    elements = sum(batched_size(r.ByteSize()) for r in requests)

    assert pb.RequestBatch(requests=requests).ByteSize() == elements
    assert _wrap(requests).ByteSize() <= BATCH_ENVELOPE_BYTES + elements
    response = pb.ConnectResponse(batch=pb.ResponseBatch(responses=[pb.ConnectResponse()]))
    assert response.ByteSize() <= BATCH_ENVELOPE_BYTES + batched_size(0)


async def test_a_message_alone_or_to_a_receiver_without_batches_goes_as_it_is() -> None:
    big = _progress(10_000)
    assert await _drain([big, None], limit=100) == [big]
    small = [_progress(10, n) for n in range(3)]
    assert await _drain([*small, None], limit=0) == small


async def test_messages_queued_before_the_end_go_out_in_one_batch_then_it_ends() -> None:
    queued = [_progress(10, n) for n in range(3)]
    assert await _drain([*queued, None], limit=10_000) == [_wrap(queued)]
