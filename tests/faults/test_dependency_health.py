"""grpc.health.v1 follows the replica's dependencies: a replica (`cpa serve`, PostgreSQL + Redis
each behind a TCP proxy) turns NOT_SERVING for every service within a probe interval and
timeout of Redis or PostgreSQL going away (refused, or silent), and SERVING once they are back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cpa_scheduler.server import SERVICE_NAMES
from tests.fixtures.cluster import Cluster
from tests.fixtures.tcp_proxy import TcpProxy

from .conftest import StartProxy

INTERVAL_S = 0.2
TIMEOUT_S = 0.5
# Detection takes at most one interval plus one timeout; the rest is room for a loaded machine.
BOUND_S = INTERVAL_S + TIMEOUT_S + 4.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def statuses(stub: health_pb2_grpc.HealthStub) -> set[int]:
    """The status of the server as a whole and of each service."""
    answers = [
        await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2.0)
        for name in ("", *SERVICE_NAMES)
    ]
    return {answer.status for answer in answers}


async def until_all(stub: health_pb2_grpc.HealthStub, status: int, *, within_s: float) -> float:
    """Seconds until every service reports `status`; fails after `within_s`."""
    started = time.monotonic()
    while (seen := await statuses(stub)) != {status}:
        assert time.monotonic() - started < within_s, f"still {seen} after {within_s}s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_health_follows_redis_and_postgres(cluster: Cluster, proxies: StartProxy) -> None:
    pg_host_port = cluster.database_url.split("@", 1)[1].split("/", 1)[0]
    pg = await proxies(pg_host_port)
    cluster.database_url = cluster.database_url.replace(f"@{pg_host_port}/", f"@{pg.address}/")
    redis_host_port = cluster.redis_url.split("//", 1)[1].split("/", 1)[0]
    redis = await proxies(redis_host_port)
    redis_url = cluster.redis_url
    cluster.redis_url = redis_url.replace(redis_host_port, redis.address)
    try:
        await run_outages(cluster, pg, redis)
    finally:
        cluster.redis_url = redis_url  # the cluster's teardown deletes the keys through it


async def run_outages(cluster: Cluster, pg: TcpProxy, redis: TcpProxy) -> None:
    cluster.settings.update(
        CPA_HEALTH_PROBE_INTERVAL_S=str(INTERVAL_S), CPA_HEALTH_PROBE_TIMEOUT_S=str(TIMEOUT_S)
    )
    # In a thread: the proxies run on this event loop and must serve the replica's start.
    replica = await asyncio.to_thread(cluster.replica, "r1")
    async with grpc.aio.insecure_channel(replica.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        await until_all(stub, SERVING, within_s=BOUND_S)

        def refuse(proxy: TcpProxy) -> Callable[[], None]:
            def down() -> None:
                proxy.refusing = True
                proxy.cut()

            return down

        def allow(proxy: TcpProxy) -> Callable[[], None]:
            def up() -> None:
                proxy.refusing = False

            return up

        outages: list[tuple[str, Callable[[], None], Callable[[], None]]] = [
            ("Redis refused", refuse(redis), allow(redis)),
            ("PostgreSQL refused", refuse(pg), allow(pg)),
            # Silent: nothing answers and nobody is told; only the probe's timeout notices.
            ("PostgreSQL silent", pg.blackhole, pg.heal),
            ("Redis silent", redis.blackhole, redis.heal),
        ]
        for what, down, up in outages:
            down()
            took = await until_all(stub, NOT_SERVING, within_s=BOUND_S)
            print(f"{what}: NOT_SERVING after {took:.2f}s")
            up()
            took = await until_all(stub, SERVING, within_s=BOUND_S)
            print(f"{what} over: SERVING after {took:.2f}s")
    assert replica.process.poll() is None  # the replica lived through all of it
