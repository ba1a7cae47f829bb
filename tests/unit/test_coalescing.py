"""The Coalescer: calls of one loop iteration share one flush, in order, and each caller learns
its own flush's outcome."""

from __future__ import annotations

import asyncio

import pytest

from cpa_scheduler.coalescing import Coalescer


class Backend:
    """Records every flush; a flush waits on `gate` when one is set, fails on `fail`."""

    def __init__(self) -> None:
        self.flushes: list[list[int]] = []
        self.started = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.fail: set[int] = set()

    async def flush(self, items: list[int]) -> None:
        self.flushes.append(items)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail & set(items):
            raise ConnectionError(f"refused {sorted(self.fail & set(items))}")


async def test_the_calls_of_one_iteration_share_one_flush() -> None:
    backend = Backend()
    coalescer = Coalescer(backend.flush, max_calls=100, name="test")

    await asyncio.gather(*(coalescer.submit([n]) for n in range(5)))

    assert backend.flushes == [[0, 1, 2, 3, 4]]


async def test_calls_made_while_a_flush_runs_go_together_in_the_next_in_order() -> None:
    backend = Backend()
    backend.gate = asyncio.Event()
    coalescer = Coalescer(backend.flush, max_calls=100, name="test")
    first = coalescer.submit([0])
    await backend.started.wait()  # the first flush runs, held at the gate

    later = [coalescer.submit([n]) for n in (1, 2, 3)]
    backend.gate.set()
    await asyncio.gather(first, *later)

    assert backend.flushes == [[0], [1, 2, 3]]


async def test_a_flush_carries_at_most_max_calls() -> None:
    backend = Backend()
    coalescer = Coalescer(backend.flush, max_calls=2, name="test")

    await asyncio.gather(*(coalescer.submit([n]) for n in range(5)))

    assert backend.flushes == [[0, 1], [2, 3], [4]]


async def test_a_failed_flush_fails_its_callers_only() -> None:
    backend = Backend()
    backend.fail = {3}
    coalescer = Coalescer(backend.flush, max_calls=2, name="test")

    results = await asyncio.gather(
        *(coalescer.submit([n]) for n in range(5)), return_exceptions=True
    )

    assert [type(result) for result in results] == [
        type(None),
        type(None),
        ConnectionError,
        ConnectionError,
        type(None),
    ]
    assert backend.flushes == [[0, 1], [2, 3], [4]]


async def test_close_flushes_what_was_submitted_then_refuses_more() -> None:
    backend = Backend()
    coalescer = Coalescer(backend.flush, max_calls=100, name="test")
    coalescer.submit([1])  # not awaited: close() must still send it

    await coalescer.close()

    assert backend.flushes == [[1]]
    with pytest.raises(RuntimeError, match="closed"):
        coalescer.submit([2])


def test_max_calls_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_calls"):
        Coalescer(Backend().flush, max_calls=0, name="test")


async def test_close_gives_up_on_a_flush_that_never_ends() -> None:
    backend = Backend()
    backend.gate = asyncio.Event()  # never set: the backend stopped answering
    coalescer = Coalescer(backend.flush, max_calls=100, name="test")
    stuck = coalescer.submit([1])
    later = coalescer.submit([2])
    await backend.started.wait()

    await coalescer.close(timeout_s=0.05)

    assert stuck.cancelled()
    assert later.cancelled()
    assert backend.flushes == [[1, 2]]
