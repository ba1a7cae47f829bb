"""When a replica's cyclic garbage collector runs its full collections.

CPython runs a full (oldest generation) collection whenever the objects promoted into the oldest
generation since the last one reach a quarter of those already there. A replica with 10 000
WatchJob streams tracks about a million objects, and its steady churn (events and writes in
flight long enough to survive two young collections, then freed by reference counting) meets
that rule every few seconds: each full collection stopped the event loop 500-700 ms, agents'
heartbeat acks included, and freed next to nothing (docs/PERFORMANCE.md, bench_watchers.py with
bench/serve_gc_stats.py).

So while a replica serves, full collections run on a clock (`interval_s`,
CPA_GC_FULL_COLLECTION_INTERVAL_S): the objects that exist when serving begins (modules,
classes, the configuration: never garbage) are frozen out of every collection, CPython's
automatic full collections are off, and `collect_forever` runs one each interval. Young
collections stay automatic, but the youngest generation is collected after 10 000 net new
objects (YOUNG_THRESHOLD) instead of CPython's 700: at 10 000 watchers those collections ran 340
times a second and freed nothing (the same churn: futures and writes alive across one), 9 % of a
core with the next generation's. Reference counting frees everything that is not in a cycle at
once, as always: what waits for the clock is only cyclic garbage that outlived two young
collections. (Objects frozen at start that later become cyclic garbage, say a policy set a
reload replaced, stay until the replica stops: at most what existed at start.)

The collector is process-wide and tests run several replicas in one process: the first
`take_over()` changes it, the last `hand_back()` restores it. Each scheduled collection's pause
is the metric `gc_full_collection_seconds`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from cpa_scheduler.telemetry import metrics

log = logging.getLogger(__name__)

# The oldest generation's threshold while replicas own the schedule: it counts young
# collections, so it is never reached.
_NEVER = 2**31 - 1
# The youngest generation's threshold while replicas own the schedule (at least; CPython's
# default is 700). Measured at 10 000 watchers: young pauses of a few ms, the longest ~35 ms
# while the watchers opened (50 000 gave a 117 ms one).
YOUNG_THRESHOLD = 10_000
# A scheduled full collection longer than this is logged as a warning (else at debug).
_SLOW_S = 1.0

_holders = 0
_saved_threshold: tuple[int, int, int] | None = None


def take_over() -> None:
    """Freezes the objects that exist now, collects the youngest generation less often and
    turns CPython's automatic full collections off (the first holder does; the others
    count)."""
    global _holders, _saved_threshold
    if _holders == 0:
        # No gc.collect() first: it would cost a test process a full pass per replica started;
        # garbage frozen here is collected once the last holder hands back.
        _saved_threshold = gc.get_threshold()
        gc.freeze()
        young, middle, _ = _saved_threshold
        gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, _NEVER)
    _holders += 1


def hand_back() -> None:
    """Undoes take_over() once its last holder hands back."""
    global _holders, _saved_threshold
    if _holders == 0:
        return
    _holders -= 1
    if _holders == 0 and _saved_threshold is not None:
        gc.set_threshold(*_saved_threshold)
        _saved_threshold = None
        gc.unfreeze()


def collect_now() -> tuple[int, float]:
    """One full collection of what is not frozen: (objects freed, seconds the process paused)."""
    started = time.perf_counter()
    freed = gc.collect(2)
    paused_s = time.perf_counter() - started
    metrics.GC_FULL_COLLECTION.observe(paused_s)
    level = logging.WARNING if paused_s >= _SLOW_S else logging.DEBUG
    log.log(level, "full garbage collection: %d objects freed, %.0f ms", freed, paused_s * 1000)
    return freed, paused_s


async def collect_forever(interval_s: float) -> None:
    """A full collection every `interval_s` (the replica's background task)."""
    while True:
        await asyncio.sleep(interval_s)
        collect_now()
