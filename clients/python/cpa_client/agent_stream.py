"""Size rules of the agent stream (ExecutorService.Connect), followed by both of its ends.

gRPC ends a whole stream (RESOURCE_EXHAUSTED) when one message is larger than its receiver's
max receive length, and an agent that reconnects sends the same message again: so each end
keeps what it sends within the budget the other told it (Hello.max_receive_bytes,
Welcome.max_report_bytes and max_assignment_bytes). A single message over the budget is never
sent (its producer replaces it with a small error), and messages waiting together go in
batches that each fit. Here, because the scheduler and the agent never import each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

# Most messages in one batch, however small.
MAX_BATCH_MESSAGES = 256
# What the batch adds around its elements in the outer message: the tag of the `batch` field
# (number 18: two bytes) and its length (a varint; five bytes cover any gRPC message).
BATCH_ENVELOPE_BYTES = 2 + 5


def _varint_bytes(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def batched_size(size: int) -> int:
    """Bytes a message of `size` bytes takes as one element of a batch: the tag of the
    repeated field (number 1: one byte), its length prefix and itself."""
    return 1 + _varint_bytes(size) + size


async def batches(
    queue: asyncio.Queue[M | None],
    *,
    batch_bytes: Callable[[], int],
    wrap: Callable[[list[M]], M],
) -> AsyncIterator[M]:
    """The queue's messages in order, until a None.

    A message goes alone when no other waits (nothing is measured then), or when
    `batch_bytes()` is 0 (the receiver reads no batches). Otherwise the messages waiting go as
    `wrap(messages)` batches whose encoded size stays within `batch_bytes()`; one that does not
    fit starts the next batch, and one that fits no batch goes alone (keeping a single message
    within the budget is its producer's business).
    """
    carried: M | None = None
    while True:
        message: M | None
        if carried is not None:
            message, carried = carried, None
        else:
            message = await queue.get()
        if message is None:
            return
        limit = batch_bytes()
        if not limit or queue.empty():
            yield message
            continue
        batch = [message]
        size = BATCH_ENVELOPE_BYTES + batched_size(message.ByteSize())
        while not queue.empty() and len(batch) < MAX_BATCH_MESSAGES:
            queued = queue.get_nowait()
            if queued is None:
                queue.put_nowait(None)  # the end, once this batch is out
                break
            queued_size = batched_size(queued.ByteSize())
            if size + queued_size > limit:
                carried = queued
                break
            batch.append(queued)
            size += queued_size
        yield batch[0] if len(batch) == 1 else wrap(batch)
