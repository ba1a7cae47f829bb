"""Full garbage collections on a clock while replicas serve (cpa_scheduler.gc_schedule)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from cpa_scheduler import gc_schedule
from cpa_scheduler.telemetry import metrics


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


@pytest.fixture
def restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    while gc_schedule._holders:
        gc_schedule.hand_back()
    assert gc.get_threshold() == threshold


def _pauses_observed() -> float:
    registry = CollectorRegistry()
    registry.register(metrics.GC_FULL_COLLECTION)
    return registry.get_sample_value("gc_full_collection_seconds_count") or 0.0


def _old_garbage() -> weakref.ref[_Node]:
    """A cycle promoted to the oldest generation, then dropped: young collections keep it."""
    node = _Node()
    gc.collect(0)
    gc.collect(1)  # survivors of generation 1 move to the oldest generation
    assert node in gc.get_objects(generation=2)
    ref = weakref.ref(node)
    del node
    gc.collect(0)
    gc.collect(1)
    assert ref() is not None
    return ref


def test_taking_over_freezes_what_exists_and_stops_automatic_full_collections(
    restored: None,
) -> None:
    before = gc.get_threshold()
    gc_schedule.take_over()
    assert gc.get_freeze_count() > 0
    young0, young1, oldest = gc.get_threshold()
    assert (young0, young1) == (max(before[0], gc_schedule.YOUNG_THRESHOLD), before[1])
    # Generation 2's count is the number of generation-1 collections since the last full one.
    assert oldest > 10**9
    gc_schedule.take_over()  # a second replica in the same process
    gc_schedule.hand_back()
    assert gc.get_threshold()[2] == oldest, "one replica stopping keeps the schedule"
    gc_schedule.hand_back()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    gc_schedule.hand_back()  # more hand-backs than take-overs change nothing
    assert gc.get_threshold() == before


def _collections_while_allocating(generation: int, count: int) -> int:
    """Collections of `generation` CPython starts by itself while `count` new objects survive."""
    gc.collect()
    started: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == generation:
            started.append(1)

    gc.callbacks.append(seen)
    try:
        survivors: list[list[int]] = [[] for _ in range(count)]
    finally:
        gc.callbacks.remove(seen)
    del survivors
    return len(started)


def _full_collections_while_allocating() -> int:
    """Full collections while more than a third of the objects CPython tracks are new
    survivors (its rule wants a quarter; the test process's heap may be large)."""
    gc.collect()
    return _collections_while_allocating(2, max(200_000, len(gc.get_objects()) // 3))


def test_cpython_starts_no_full_collection_by_itself_once_taken_over(restored: None) -> None:
    assert _full_collections_while_allocating() > 0, "CPython's own rule, for comparison"
    gc_schedule.take_over()
    assert _full_collections_while_allocating() == 0


def test_the_youngest_generation_is_collected_less_often_once_taken_over(
    restored: None,
) -> None:
    count = 20 * gc_schedule.YOUNG_THRESHOLD
    assert _collections_while_allocating(0, count) >= count // 1000, "CPython's 700"
    gc_schedule.take_over()
    assert _collections_while_allocating(0, count) <= count // gc_schedule.YOUNG_THRESHOLD + 1


def test_old_cyclic_garbage_waits_for_the_scheduled_collection(restored: None) -> None:
    gc_schedule.take_over()
    ref = _old_garbage()
    for _ in range(50):  # many young collections: the oldest generation is never collected
        gc.collect(1)
    assert ref() is not None
    before = _pauses_observed()
    freed, paused_s = gc_schedule.collect_now()
    assert ref() is None
    assert freed >= 1
    assert paused_s >= 0
    assert _pauses_observed() == before + 1, "each pause is in gc_full_collection_seconds"


def test_frozen_objects_are_left_out_until_handed_back(restored: None) -> None:
    node = _Node()
    ref = weakref.ref(node)
    gc_schedule.take_over()  # node exists now: frozen
    del node
    gc_schedule.collect_now()
    assert ref() is not None, "a frozen object is not collected"
    gc_schedule.hand_back()
    gc.collect()
    assert ref() is None


async def test_collect_forever_collects_each_interval(restored: None) -> None:
    gc_schedule.take_over()
    ref = _old_garbage()
    freed = asyncio.Event()
    node = ref()
    assert node is not None
    weakref.finalize(node, freed.set)
    del node
    task = asyncio.create_task(gc_schedule.collect_forever(0.01))
    try:
        async with asyncio.timeout(10):
            await freed.wait()
    finally:
        task.cancel()
    assert ref() is None
