"""The scheduler process: builds the components, serves gRPC, stops gracefully.

`SchedulerServer.start()` binds and returns the port (tests use port 0); `stop()` turns health
NOT_SERVING, lets calls finish within the grace period, then closes the store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from cpa.executor.v1 import executor_service_pb2, executor_service_pb2_grpc
from cpa.scheduler.v1 import scheduler_service_pb2, scheduler_service_pb2_grpc

from .api.executor_servicer import ExecutorServicer
from .api.lam import LamHandler
from .api.scheduler_servicer import SchedulerServicer
from .backends import Backends, open_backends
from .background import stop_tasks
from .dispatch import SessionRegistry
from .dispatch.dispatcher import Dispatcher
from .orchestration import Orchestrator
from .planning import Planner, RuleIntentRouter, load_catalog
from .settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    scheduler_service_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name,
    executor_service_pb2.DESCRIPTOR.services_by_name["ExecutorService"].full_name,
)
# Room above the request limit, so an oversized request reaches our own check (and its reason).
_TRANSPORT_MARGIN_BYTES = 1024 * 1024


@dataclass(slots=True)
class _Components:
    backends: Backends
    orchestrator: Orchestrator
    dispatcher: Dispatcher
    sessions: SessionRegistry


# How often the dispatcher looks at a queue shared with other replicas even without a wake-up
# (a notification lost on the way); the embedded queue always wakes it.
_SHARED_QUEUE_POLL_S = 0.5


# How long stop() waits for the background tasks (dispatcher, sweeper, reconciler) to end.
_BACKGROUND_STOP_TIMEOUT_S = 5.0


class SchedulerServer:
    """One scheduler replica."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.replica_id = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self._components: _Components | None = None
        self._background: list[asyncio.Task[None]] = []

    @property
    def sessions(self) -> SessionRegistry:
        assert self._components is not None, "start() first"
        return self._components.sessions

    async def _build(self) -> _Components:
        settings = self.settings
        # Load the catalog first: a broken one must stop the start, naming file and line.
        planner = Planner(
            RuleIntentRouter(load_catalog(settings.intents_path)),
            max_tasks=settings.max_tasks_per_job,
        )
        sessions = SessionRegistry()
        backends = await open_backends(settings, replica_id=self.replica_id, sessions=sessions)
        directory, bus = backends.directory, backends.bus
        orchestrator = Orchestrator(
            store=backends.store,
            planner=planner,
            queue=backends.queue,
            bus=bus,
            directory=directory,
            settings=settings,
        )
        dispatcher = Dispatcher(
            queue=backends.queue,
            sessions=sessions,
            orchestrator=orchestrator,
            poll_interval_s=_SHARED_QUEUE_POLL_S if backends.distributed else None,
        )
        server = grpc.aio.server(
            options=[
                (
                    "grpc.max_receive_message_length",
                    settings.max_request_bytes + _TRANSPORT_MARGIN_BYTES,
                ),
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        scheduler_service_pb2_grpc.add_SchedulerServiceServicer_to_server(
            SchedulerServicer(
                orchestrator=orchestrator,
                sessions=sessions,
                directory=directory,
                bus=bus,
                lam=LamHandler(orchestrator=orchestrator, settings=settings),
                settings=settings,
            ),
            server,
        )
        executor_service_pb2_grpc.add_ExecutorServiceServicer_to_server(
            ExecutorServicer(
                orchestrator=orchestrator,
                sessions=sessions,
                directory=directory,
                dispatcher=dispatcher,
                settings=settings,
                replica_id=self.replica_id,
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        self._server = server
        return _Components(
            backends=backends,
            orchestrator=orchestrator,
            dispatcher=dispatcher,
            sessions=sessions,
        )

    async def start(self, address: str | None = None) -> int:
        """Build, recover queued work, bind and serve; returns the bound port."""
        self._components = components = await self._build()
        assert self._server is not None
        port = self._server.add_insecure_port(address or self.settings.listen_address)
        if port == 0:
            raise RuntimeError(f"cannot bind {address or self.settings.listen_address}")
        recovered = await components.orchestrator.recover()
        self._background = [
            asyncio.create_task(components.dispatcher.run(), name="dispatcher"),
            asyncio.create_task(
                components.orchestrator.sweep_forever(
                    interval_s=min(1.0, self.settings.lease_duration_s / 4)
                ),
                name="sweeper",
            ),
        ]
        if components.backends.distributed:
            self._background.append(
                asyncio.create_task(
                    components.orchestrator.reconcile_forever(
                        interval_s=self.settings.reconcile_interval_s
                    ),
                    name="reconciler",
                )
            )
        components.dispatcher.wake()
        await self._server.start()
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "scheduler %s serving on port %d (%d queued tasks recovered)",
            self.replica_id,
            port,
            recovered,
        )
        return port

    async def stop(self, grace_s: float = 5.0) -> None:
        """Health NOT_SERVING, then let calls finish for `grace_s`, then close the store."""
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace_s)
        await stop_tasks(self._background, timeout_s=_BACKGROUND_STOP_TIMEOUT_S)
        self._background = []
        if self._components is not None:
            await self._components.backends.close()
            self._components = None

    async def wait(self) -> None:
        assert self._server is not None, "start() first"
        await self._server.wait_for_termination()
