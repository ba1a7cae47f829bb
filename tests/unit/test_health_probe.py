"""HealthProbe against grpc's real HealthServicer: a failing or hung check turns every service
NOT_SERVING, a passing round SERVING again, a hung check is not started twice, and a server that
entered its graceful shutdown stays NOT_SERVING whatever the checks say."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from cpa_scheduler.health import NOT_SERVING, SERVING, HealthProbe

SERVICES = ("", "cpa.scheduler.v1.SchedulerService", "cpa.executor.v1.ExecutorService")


class Dependency:
    """A check whose outcome the test sets: pass, raise, or hang until released."""

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.hang = asyncio.Event()
        self.hang.set()
        # Like a driver that tries to cancel the query over a dead network: a cancelled check
        # ends only once this is set.
        self.ends_after_cancel = asyncio.Event()
        self.ends_after_cancel.set()
        self.calls = 0

    async def check(self) -> None:
        self.calls += 1
        try:
            await self.hang.wait()
        except asyncio.CancelledError:
            await self.ends_after_cancel.wait()
            raise
        if self.error is not None:
            raise self.error


async def statuses(health: health_aio.HealthServicer) -> set[int]:
    return {
        (await health.Check(health_pb2.HealthCheckRequest(service=name), None)).status
        for name in SERVICES
    }


async def serving_probe(dependency: Dependency) -> tuple[health_aio.HealthServicer, HealthProbe]:
    health = health_aio.HealthServicer()
    for name in SERVICES:
        await health.set(name, SERVING)
    probe = HealthProbe(
        health, SERVICES, {"store": dependency.check}, interval_s=0.01, timeout_s=0.05
    )
    return health, probe


async def test_a_failing_check_turns_every_service_not_serving_until_it_passes() -> None:
    store = Dependency()
    health, probe = await serving_probe(store)
    await probe.probe_once()
    assert await statuses(health) == {SERVING}

    store.error = ConnectionError("connection refused\nsecond line")
    await probe.probe_once()
    assert await statuses(health) == {NOT_SERVING}
    assert probe.failures == {"store": "connection refused"}

    store.error = None
    await probe.probe_once()
    assert await statuses(health) == {SERVING}
    assert probe.failures == {}


async def test_a_hung_check_counts_as_failed_and_is_not_started_again() -> None:
    store = Dependency()
    health, probe = await serving_probe(store)
    store.hang.clear()
    store.ends_after_cancel.clear()
    await probe.probe_once()
    await probe.probe_once()
    assert await statuses(health) == {NOT_SERVING}
    assert probe.failures == {"store": "no answer within 0.05s"}
    # The first check, cancelled at its timeout, has not ended: the second round waited for it
    # instead of starting another.
    assert store.calls == 1
    store.hang.set()
    store.ends_after_cancel.set()
    await probe.probe_once()
    assert store.calls == 2
    assert await statuses(health) == {SERVING}


async def test_a_stopping_server_stays_not_serving() -> None:
    store = Dependency()
    health, probe = await serving_probe(store)
    store.error = OSError("gone")
    await probe.probe_once()
    await health.enter_graceful_shutdown()
    store.error = None
    await probe.probe_once()
    assert await statuses(health) == {NOT_SERVING}
