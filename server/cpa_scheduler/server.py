"""The scheduler process: builds the components, serves gRPC, stops gracefully.

`SchedulerServer.start()` binds and returns the port (tests use port 0); `stop()` turns health
NOT_SERVING, drains the agents' streams (they finish their attempts or move to another replica),
lets other calls finish within the grace period, then closes the store (docs/ARCHITECTURE.md,
"Graceful shutdown").
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from cpa.admin.v1 import admin_service_pb2
from cpa.executor.v1 import executor_service_pb2
from cpa.scheduler.v1 import scheduler_service_pb2

from . import gc_schedule
from .api.admin_servicer import AdminServicer
from .api.call_limit import CallLimit
from .api.decoded_service import add_decoded_service
from .api.executor_servicer import ExecutorServicer
from .api.lam import LamHandler
from .api.memory_calls import MemoryCalls
from .api.page_token import PageTokens
from .api.rate_limiter import RateLimiter
from .api.scheduler_servicer import SchedulerServicer
from .artifacts import Artifacts
from .audit import AuditLog, RefusalBound
from .backends import Backends, open_backends
from .background import stop_tasks
from .callbacks.address_guard import AddressPolicy
from .callbacks.backoff import BackoffPolicy
from .callbacks.deliverer import CallbackDeliverer
from .callbacks.keys import signing_keys
from .callbacks.messages import callback_messages
from .callbacks.outbox import CallbackOutbox
from .callbacks.sender import CallbackSender
from .dispatch import SessionRegistry
from .dispatch.dispatcher import Dispatcher
from .events import EventBus, Watchers
from .health import HealthProbe
from .llm import LLMProvider
from .llm.registry import provider_from_settings
from .memory.recorder import RecordingBus
from .memory.wiring import Memory, open_memory
from .orchestration import Orchestrator
from .planning import Planner
from .planning.llm_planning import Memories
from .policy import Policies
from .redis_keys import RedisKeys
from .security.authenticator import Authenticator
from .security.client_address import parse_trusted_proxies
from .security.credential_watch import CredentialWatch
from .security.interceptor import AuthInterceptor
from .security.jwt_tokens import JwtVerifier
from .security.local_admin import create_local_admin_key
from .security.quotas import Quotas
from .security.tenant_limits import LimitsTable
from .settings import Settings
from .storage.data_dir import read_or_create_secret
from .telemetry import metrics, tracing
from .telemetry.metrics_http import MetricsEndpoint, serve_metrics
from .telemetry.metrics_rpc import RpcMetrics
from .tls import ServerTls

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    scheduler_service_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name,
    executor_service_pb2.DESCRIPTOR.services_by_name["ExecutorService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)
# The transport's receive limit sits well above CPA_MAX_REQUEST_BYTES, so an oversized request
# reaches our own check (PAYLOAD_TOO_LARGE, api/decoded_service.py) instead of gRPC's bare
# RESOURCE_EXHAUSTED, which clients retry. The factor covers what the REST gateway lets through:
# its JSON body limit is CPA_MAX_REQUEST_BYTES, and protobuf can be 5.5 times larger than the
# JSON it came from (`0,` in a JSON array is 11 bytes as a google.protobuf.Value in a list).
_TRANSPORT_FACTOR = 6
# Client streams' messages (agents' reports, upload chunks) keep this much room above it.
_TRANSPORT_MARGIN_BYTES = 1024 * 1024


class _SizeLimits(TypedDict):
    """add_decoded_service's size limits, the same for every service."""

    max_request_bytes: int
    max_stream_message_bytes: int


def transport_receive_limit(max_request_bytes: int) -> int:
    """gRPC's receive limit for a server whose request budget is `max_request_bytes`: bodies
    up to it get our own PAYLOAD_TOO_LARGE, larger ones gRPC's RESOURCE_EXHAUSTED."""
    return max(max_request_bytes * _TRANSPORT_FACTOR, max_request_bytes + _TRANSPORT_MARGIN_BYTES)


@dataclass(slots=True)
class _Components:
    backends: Backends
    orchestrator: Orchestrator
    dispatcher: Dispatcher
    sessions: SessionRegistry
    executor: ExecutorServicer
    deliverer: CallbackDeliverer
    # None with settings.insecure_local.
    authenticator: Authenticator | None
    credentials: CredentialWatch | None
    # The planner's language model (None: text is planned by the rules alone).
    llm: LLMProvider | None = None
    # None with CPA_MEMORY_ENABLED=false.
    memory: Memory | None = None


# How often the dispatcher looks at a queue shared with other replicas even without a wake-up
# (a notification lost on the way).
_SHARED_QUEUE_POLL_S = 0.5
# The embedded queue wakes it on every publish; the slow poll is a safety net only (a wake-up
# lost to a bug would else strand the task until a restart: the embedded mode has no
# reconciler). One look at an in-process dict: nothing on the hot path.
_EMBEDDED_QUEUE_POLL_S = 5.0


# How long stop() waits for the background tasks (dispatcher, sweeper, reconciler) to end.
_BACKGROUND_STOP_TIMEOUT_S = 5.0


PAGE_TOKEN_SECRET = "page_token.secret"
_MIN_SECRET_CHARS = 16


def _configured_secrets(settings: Settings) -> list[bytes]:
    """settings.page_token_secrets, checked; empty in the embedded mode when none is set.

    Replicas sharing a database must verify each other's tokens (a client's next page may
    reach another replica), so each making up its own secret would break paging at random:
    the distributed mode refuses to start without the setting instead."""
    secrets = [part.strip() for part in settings.page_token_secrets.split(",") if part.strip()]
    if any(len(secret) < _MIN_SECRET_CHARS for secret in secrets):
        raise RuntimeError(
            f"CPA_PAGE_TOKEN_SECRETS: each secret needs at least {_MIN_SECRET_CHARS} characters"
        )
    if not secrets and settings.database_url:
        raise RuntimeError(
            "CPA_PAGE_TOKEN_SECRETS is not set: replicas that share a database sign page tokens "
            "with the same secrets; set it (the same on every replica), e.g. to the output of "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`"
        )
    return [secret.encode() for secret in secrets]


def _bind(server: grpc.aio.Server, address: str, tls: ServerTls | None) -> int:
    """Bind `address` (with TLS when `tls`); a RuntimeError that says why (gRPC's own says
    only "Failed to bind")."""
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, tls.credentials())
    except RuntimeError:
        port = 0
    if port == 0:
        raise RuntimeError(f"cannot bind {address}: {_bind_failure(address)}")
    return port


def _bind_failure(address: str) -> str:
    """Why the OS refuses to bind `address` (the port in use, most often), asked with a plain
    socket since gRPC does not tell."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM)
        family, kind, _, _, where = infos[0]
        with socket.socket(family, kind) as probe:
            probe.bind(where)
    except (OSError, ValueError, IndexError) as refusal:
        if isinstance(refusal, OSError) and refusal.errno == errno.EADDRINUSE:
            return "address already in use (another server listens there)"
        return str(refusal)
    return "refused by gRPC (see its log with GRPC_VERBOSITY=debug)"


def is_loopback(address: str) -> bool:
    """Whether `address` (host:port) binds loopback only."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SchedulerServer:
    """One scheduler replica."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.replica_id = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self._components: _Components | None = None
        self._background: list[asyncio.Task[None]] = []
        self._hurry = asyncio.Event()
        # The embedded default's key, made at this start (the first): (secret, file), printed
        # once by `cpa serve`.
        self.local_admin_key: tuple[str, Path] | None = None
        self.tls: ServerTls | None = None
        self.metrics: MetricsEndpoint | None = None
        self._gc_scheduled = False  # holds gc_schedule (full collections on a clock)

    @property
    def sessions(self) -> SessionRegistry:
        assert self._components is not None, "start() first"
        return self._components.sessions

    def process_credential(self) -> str | None:
        """An admin key of the default tenant valid in this process only (the local agent's);
        None with authentication off."""
        assert self._components is not None, "start() first"
        authenticator = self._components.authenticator
        if authenticator is None:
            return None
        return authenticator.process_key(self.settings.default_tenant)

    @property
    def policies(self) -> Policies:
        """The tenant policies in force on this replica (reloaded as their files change)."""
        assert self._components is not None, "start() first"
        return self._components.orchestrator.policies

    @property
    def memory(self) -> Memory | None:
        """This replica's context memory (None when disabled)."""
        assert self._components is not None, "start() first"
        return self._components.memory

    @property
    def watchers(self) -> Watchers:
        """This replica's WatchJob subscriptions (counts and buffers, for tests and metrics)."""
        assert self._components is not None, "start() first"
        return self._components.backends.bus.watchers

    async def _build(self) -> _Components:
        settings = self.settings
        # Load the catalog first: a broken one must stop the start, naming file and line.
        # With a language model, free text is planned with it too (docs/PLANNING.md); a
        # provider that cannot start (no API key) stops the start.
        llm = provider_from_settings(settings)
        planner = Planner.from_settings(settings, provider=llm)
        # Read before anything opens: a bad certificate or key stops the start, naming it.
        self.tls = ServerTls.from_settings(settings)
        # So are the tenant policies: a broken file stops the start, naming file and line.
        policies = Policies(settings.policy_dir)
        configured_secrets = _configured_secrets(settings)
        # Likewise a broken tenant limits file or proxy list.
        limits = LimitsTable.from_settings(settings)
        trusted_proxies = parse_trusted_proxies(settings.trusted_proxies)
        sessions = SessionRegistry()
        tracing_on = tracing.from_settings(settings, instance=self.replica_id) is not None
        backends = await open_backends(settings, replica_id=self.replica_id, sessions=sessions)
        if tracing_on:
            # Spans for each store transaction and each queue operation (one Redis round).
            backends.store = tracing.traced(backends.store, "store")
            backends.queue = tracing.traced(backends.queue, "queue")
        try:
            # The embedded server's own secret, read or made under the data directory's lock.
            page_tokens = PageTokens(
                configured_secrets or [read_or_create_secret(settings.data_dir / PAGE_TOKEN_SECRET)]
            )
        except BaseException:
            await backends.close()
            raise
        directory = backends.directory
        bus: EventBus = backends.bus
        try:
            deliverer = self._deliverer(backends)
            memory = await self._memory(backends, llm)
        except BaseException:
            await backends.close()
            raise
        if memory is not None:
            # Finished jobs are remembered from the events the orchestrator publishes, and
            # the planner reads them (and the conversation) when the model plans text.
            bus = RecordingBus(bus, memory.recorder)
            planner.use_memories(
                Memories(conversation=memory.conversations, semantic=memory.semantic)
            )
        orchestrator = Orchestrator(
            store=backends.store,
            planner=planner,
            queue=backends.queue,
            bus=bus,
            directory=directory,
            settings=settings,
            callback_messages=callback_messages,
            quotas=Quotas(backends.store, limits, cache_s=settings.quota_cache_s),
            policies=policies,
        )
        orchestrator.callbacks_made = deliverer.wake
        dispatcher = Dispatcher(
            queue=backends.queue,
            sessions=sessions,
            orchestrator=orchestrator,
            poll_interval_s=_SHARED_QUEUE_POLL_S
            if backends.distributed
            else _EMBEDDED_QUEUE_POLL_S,
        )
        orchestrator.claim_agent = dispatcher.claim
        artifacts = Artifacts(
            content=backends.artifacts,
            orchestrator=orchestrator,
            max_bytes=settings.artifact_max_bytes,
        )
        authenticator = (
            None
            if settings.insecure_local
            else Authenticator(
                keys=backends.store,
                cache_ttl_s=settings.auth_cache_ttl_s,
                jwt=JwtVerifier(settings) if settings.jwt_issuer else None,
            )
        )
        # Open streams (agents', WatchJob's) end with their credential, looking twice a TTL.
        credentials = (
            None
            if authenticator is None
            else CredentialWatch(authenticator, interval_s=settings.auth_cache_ttl_s / 2)
        )
        audit_log = AuditLog(
            store=backends.store,
            bound=RefusalBound(
                per_minute=settings.audit_refusals_per_minute,
                total_per_minute=settings.audit_refusals_total_per_minute,
            ),
        )
        # Outermost first. The call limit bounds calls in progress whoever makes them (a flood
        # of unauthenticated calls too, before any credential lookup); authentication sets the
        # principal the rate limiter then keys by, so the rate limiter comes after it.
        interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = [
            # First: a refused call (limits, credentials) is traced too.
            *([tracing.server_interceptor()] if tracing_on else []),
            # Outside every interceptor that refuses calls: their refusals are counted by code.
            RpcMetrics(),
            CallLimit(settings.max_concurrent_rpcs),
            AuthInterceptor(
                authenticator, default_tenant=settings.default_tenant, audit_log=audit_log
            ),
        ]
        if settings.rate_limits_enabled:
            # Last: after authentication, which names the credential it limits.
            interceptors.append(
                RateLimiter(
                    backends.rate_buckets,
                    limits,
                    per_ip=settings.rate_limit_per_ip,
                    trusted_proxies=trusted_proxies,
                    default_tenant=settings.default_tenant,
                    keys=RedisKeys(settings.redis_key_prefix),
                    audit_log=audit_log,
                )
            )
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                (
                    "grpc.max_receive_message_length",
                    transport_receive_limit(settings.max_request_bytes),
                ),
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.keepalive_permit_without_calls", 1),
                # gRPC's default SO_REUSEPORT let a second server bind the same port and take
                # a share of new connections; without it the second bind fails (_bind).
                ("grpc.so_reuseport", 0),
                # gRPC core's queue of calls not yet taken by the server: at its default bound
                # (1 000, hard 3 000) a burst of 5 000 opens had 1 229 cancelled, unlogged.
                # Soft = hard: beyond it every new call is cancelled, not a random share.
                ("grpc.server.max_pending_requests", settings.max_pending_rpcs),
                ("grpc.server.max_pending_requests_hard_limit", settings.max_pending_rpcs),
            ],
        )
        # Requests decoded by us: an undecodable body is INVALID_ARGUMENT, not gRPC's UNKNOWN,
        # an oversized one PAYLOAD_TOO_LARGE. Client streams' messages keep the bound the
        # transport gave them before: agents' reports and batches stay under
        # Welcome.max_report_bytes, upload chunks under 1 MiB.
        size_limits = _SizeLimits(
            max_request_bytes=settings.max_request_bytes,
            max_stream_message_bytes=settings.max_request_bytes + _TRANSPORT_MARGIN_BYTES,
        )
        add_decoded_service(
            SchedulerServicer(
                orchestrator=orchestrator,
                sessions=sessions,
                directory=directory,
                bus=bus,
                lam=LamHandler(
                    orchestrator=orchestrator,
                    settings=settings,
                    audit_log=audit_log,
                    conversations=memory.conversations if memory else None,
                ),
                settings=settings,
                page_tokens=page_tokens,
                artifacts=artifacts,
                callbacks=CallbackOutbox(store=backends.store, wake=deliverer.wake),
                audit_log=audit_log,
                credentials=credentials,
                memory=MemoryCalls(
                    memory.semantic if memory else None,
                    text_max_bytes=settings.memory_text_max_bytes,
                ),
            ),
            scheduler_service_pb2.DESCRIPTOR.services_by_name["SchedulerService"],
            server,
            **size_limits,
            own_text_check={"SendMessage"},  # NOT_UNDERSTOOD, as any malformed LAM message
        )
        executor = ExecutorServicer(
            orchestrator=orchestrator,
            sessions=sessions,
            directory=directory,
            dispatcher=dispatcher,
            settings=settings,
            replica_id=self.replica_id,
            artifacts=artifacts,
            credentials=credentials,
        )
        add_decoded_service(
            executor,
            executor_service_pb2.DESCRIPTOR.services_by_name["ExecutorService"],
            server,
            **size_limits,
            own_text_check={"Connect"},  # per message kind: a report is never refused for it
        )
        add_decoded_service(
            AdminServicer(
                backends.store,
                audit_log=audit_log,
                default_tenant=settings.default_tenant,
                page_tokens=page_tokens,
                forget=credentials.forget if credentials else lambda key_id: None,
            ),
            admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"],
            server,
            **size_limits,
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
            executor=executor,
            authenticator=authenticator,
            credentials=credentials,
            deliverer=deliverer,
            llm=llm,
            memory=memory,
        )

    async def _memory(self, backends: Backends, llm: LLMProvider | None) -> Memory | None:
        """The replica's context memory (docs/MEMORY.md), closed with the backends."""
        if not self.settings.memory_enabled:
            return None
        memory = await open_memory(
            self.settings, backends.store, redis=backends.redis, provider=llm
        )
        backends.add_closer(memory.close)
        memory.start()
        return memory

    def _deliverer(self, backends: Backends) -> CallbackDeliverer:
        """The outbox's deliverer of this replica (docs/CALLBACKS.md)."""
        settings = self.settings
        policy = AddressPolicy.of(
            allow_private=settings.callback_allow_private,
            allowed_networks=settings.callback_allowed_networks,
        )
        return CallbackDeliverer(
            store=backends.store,
            # Deliveries run in the background, outside any call: each is its own trace's root.
            sender=tracing.traced(
                CallbackSender(
                    policy=policy,
                    ca_file=settings.callback_ca_file,
                    timeout_s=settings.callback_timeout_s,
                ),
                "callback",
                root=True,
            ),
            keys=signing_keys(settings, distributed=backends.distributed),
            backoff=BackoffPolicy(
                initial_s=settings.callback_backoff_initial_s, max_s=settings.callback_backoff_max_s
            ),
            max_attempts=settings.callback_max_attempts,
            claim_s=settings.callback_claim_s,
            poll_interval_s=settings.callback_poll_interval_s,
            concurrency=settings.callback_concurrency,
            claimer=self.replica_id,
        )

    async def start(self, address: str | None = None) -> int:
        """Build, recover queued work, bind and serve; returns the bound port."""
        address = address or self.settings.listen_address
        if self.settings.insecure_local and not is_loopback(address):
            raise RuntimeError(
                f"insecure-local (authentication off) listens on loopback only, not {address}: "
                "listen on 127.0.0.1, or turn authentication on (docs/SECURITY.md)"
            )
        self._components = components = await self._build()
        assert self._server is not None
        port = _bind(self._server, address, self.tls)
        # The embedded default (no credential configured): a local admin key at the first start.
        settings = self.settings
        if components.authenticator and not (settings.database_url or settings.jwt_issuer):
            self.local_admin_key = await create_local_admin_key(
                components.backends.store, settings.data_dir, tenant=settings.default_tenant
            )
        recovered = await components.orchestrator.recover()
        self._background = [
            asyncio.create_task(components.dispatcher.run(), name="dispatcher"),
            asyncio.create_task(
                components.orchestrator.sweep_forever(
                    interval_s=min(1.0, self.settings.lease_duration_s / 4)
                ),
                name="sweeper",
            ),
            asyncio.create_task(components.deliverer.run(), name="callback-deliverer"),
        ]
        policies = components.orchestrator.policies
        if policies.directory is not None and self.settings.policy_reload_interval_s > 0:
            self._background.append(
                asyncio.create_task(
                    policies.watch_forever(interval_s=self.settings.policy_reload_interval_s),
                    name="policy-reload",
                )
            )
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
        if settings.metrics_address:
            self.metrics = serve_metrics(
                settings.metrics_address, metrics.replica_registry(components.sessions)
            )
            metrics.enable()
            self._background.append(
                asyncio.create_task(
                    metrics.StoreGauges(components.backends.store).run_forever(
                        settings.metrics_queue_interval_s
                    ),
                    name="metrics-store-gauges",
                )
            )
        await self._server.start()
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        probe = HealthProbe(
            self._health,
            ("", *SERVICE_NAMES),
            components.backends.health_checks,
            interval_s=self.settings.health_probe_interval_s,
            timeout_s=self.settings.health_probe_timeout_s,
        )
        self._background.append(asyncio.create_task(probe.run_forever(), name="health-probe"))
        if settings.gc_full_collection_interval_s > 0 and not self._gc_scheduled:
            gc_schedule.take_over()
            self._gc_scheduled = True
            self._background.append(
                asyncio.create_task(
                    gc_schedule.collect_forever(settings.gc_full_collection_interval_s),
                    name="gc-full-collections",
                )
            )
        log.info(
            "scheduler %s serving on port %d%s (%d queued tasks recovered)",
            self.replica_id,
            port,
            "" if self.tls is None else (" with mutual TLS" if self.tls.mutual else " with TLS"),
            recovered,
        )
        return port

    def reload_tls(self) -> bool:
        """Re-read the TLS certificate, key and client CA (SIGHUP): new connections get them,
        open ones keep theirs. False when TLS is off or the files are unusable (logged; the
        current certificate stays)."""
        if self.tls is None:
            log.info("reload asked, but the listener has no TLS (CPA_TLS_CERT_FILE unset)")
            return False
        return self.tls.reload()

    def hurry(self) -> None:
        """Cut a stop short: end the agents' drain and the calls' grace period now."""
        self._hurry.set()

    async def stop(self, grace_s: float = 5.0, *, drain_s: float | None = None) -> None:
        """Stops gracefully within about `drain_s` + `grace_s` (+ the background tasks' stop).

        1. Health turns NOT_SERVING for every service at once; new agent streams are refused
           with UNAVAILABLE (SERVER_SHUTTING_DOWN). Other calls are still served, for at least
           `settings.shutdown_unready_s` (load balancers' time to notice), alongside step 3.
        2. The dispatcher takes no more work; what it took is assigned first.
        3. Every agent stream gets a ServerDrain with deadline now + `drain_s` (default
           `settings.shutdown_drain_s`): agents take no new work, finish their attempts (their
           results are committed and acked as usual) and end their streams, then reconnect to
           another replica. At the deadline the streams still open are closed; their agents
           reconnect elsewhere with their attempts running, and that replica adopts them.
        4. gRPC stops: calls still running get `grace_s`, then are cancelled.
        5. The background tasks stop and the store flushes and closes.

        `hurry()` (a second signal) cuts steps 3 and 4 short. Calling stop() again is harmless.
        """
        drain_s = self.settings.shutdown_drain_s if drain_s is None else drain_s
        started_s = time.monotonic()
        components = self._components
        if components is not None:
            # Before health changes: whoever sees NOT_SERVING also sees new streams refused.
            components.executor.refuse_new_sessions()
        await self._health.enter_graceful_shutdown()
        unready_until = time.monotonic() + self.settings.shutdown_unready_s
        if components is not None:
            await self._drain_agents(components, drain_s)
        # Calls routed here before the balancers saw NOT_SERVING are still served, not cut.
        if (unready_s := unready_until - time.monotonic()) > 0:
            await self._unless_hurried(asyncio.sleep(unready_s), unready_s)
        if self._server is not None:
            await self._stop_grpc(self._server, grace_s)
        await stop_tasks(self._background, timeout_s=_BACKGROUND_STOP_TIMEOUT_S)
        self._background = []
        if self._gc_scheduled:
            self._gc_scheduled = False
            gc_schedule.hand_back()
        if components is not None:
            # Reports and changes whose callers were cancelled by the stop still carry out
            # their effects before the store and the queue close.
            await components.executor.reports_done(timeout_s=_BACKGROUND_STOP_TIMEOUT_S)
            await components.orchestrator.drain_changes(timeout_s=_BACKGROUND_STOP_TIMEOUT_S)
            if components.credentials is not None:
                await components.credentials.close()
            await components.backends.close()
            if components.llm is not None:
                await components.llm.aclose()
            tracing.flush()
            self._components = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
            log.info("scheduler %s stopped in %.2fs", self.replica_id, time.monotonic() - started_s)

    async def _drain_agents(self, components: _Components, drain_s: float) -> None:
        """Steps 2 and 3 of stop(): stop assigning, drain the open streams."""
        executor = components.executor
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + drain_s
        deadline = datetime.now(UTC) + timedelta(seconds=drain_s)
        # Assignments already taken reach the agents before the drain does.
        components.dispatcher.stop_assigning()
        await self._unless_hurried(
            components.dispatcher.assignments_done(timeout_s=drain_s), deadline_s - loop.time()
        )
        asked = executor.drain_sessions(
            deadline=deadline, reason=f"replica {self.replica_id} is shutting down"
        )
        if not asked:
            return
        log.info("stopping: %d agents drain (deadline in %.1fs)", asked, drain_s)
        await self._unless_hurried(executor.wait_sessions_closed(), deadline_s - loop.time())
        if closed := executor.close_sessions():
            log.warning("closing %d agent streams still open at the end of the drain", closed)
            # Their ends are quick (no agent to wait for); gRPC's stop cancels what remains.
            await self._unless_hurried(executor.wait_sessions_closed(), 1.0)

    async def _stop_grpc(self, server: grpc.aio.Server, grace_s: float) -> None:
        """server.stop(grace_s), cut to no grace when hurry() comes meanwhile."""
        if self._hurry.is_set():
            grace_s = 0
        stopping = asyncio.ensure_future(server.stop(grace_s))
        hurried = asyncio.ensure_future(self._hurry.wait())
        try:
            await asyncio.wait({stopping, hurried}, return_when=asyncio.FIRST_COMPLETED)
            if not stopping.done():
                await server.stop(0)  # a smaller grace than the running stop's ends it sooner
            await stopping
        finally:
            hurried.cancel()

    async def _unless_hurried(self, awaitable: Awaitable[None], timeout_s: float) -> None:
        """Awaits `awaitable` for at most `timeout_s`, or until hurry(); then cancels it."""
        work = asyncio.ensure_future(awaitable)
        hurried = asyncio.ensure_future(self._hurry.wait())
        try:
            await asyncio.wait(
                {work, hurried}, timeout=max(0.0, timeout_s), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (work, hurried):
                task.cancel()
            await asyncio.gather(work, hurried, return_exceptions=True)

    async def wait(self) -> None:
        assert self._server is not None, "start() first"
        await self._server.wait_for_termination()
