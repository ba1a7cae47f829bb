"""Fixtures of the security suite: a real scheduler with authentication ON (tests/conftest.py
turns it off for every other suite), its local admin key, and keys made through AdminService.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from cpa.admin.v1 import admin_service_pb2 as admin_pb
from cpa.scheduler.v1 import job_event_pb2, job_pb2
from cpa_client import AdminClient, CpaError, SchedulerClient
from cpa_scheduler.security.local_admin import create_local_admin_key
from cpa_scheduler.server import SchedulerServer
from cpa_scheduler.settings import Settings
from tests.cli.conftest import start_cli as start_cli  # the REST matrix starts `cpa gateway`
from tests.e2e.conftest import todo
from tests.fixtures.cluster import PAGE_TOKEN_SECRETS, migrate

STORES = ["sqlite", "postgres"]

# Short: revocation tests wait about this long; long enough that a cached read is seen hitting.
CACHE_TTL_S = 0.6
CALL_TIMEOUT_S = 20.0

ROLE = {
    "viewer": admin_pb.ROLE_VIEWER,
    "submitter": admin_pb.ROLE_SUBMITTER,
    "approver": admin_pb.ROLE_APPROVER,
    "operator": admin_pb.ROLE_OPERATOR,
    "admin": admin_pb.ROLE_ADMIN,
    "agent": admin_pb.ROLE_AGENT,
}


def secure_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings with authentication on, explicitly (the environment says insecure-local)."""
    return Settings(
        data_dir=data_dir,
        insecure_local=False,
        auth_cache_ttl_s=CACHE_TTL_S,
        lease_duration_s=2.0,
        heartbeat_interval_s=0.2,
        **overrides,
    )


@dataclass
class SecureScheduler:
    server: SchedulerServer
    port: int
    admin_key: str

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def admin(self, *, act_as_tenant: str = "") -> AdminClient:
        return AdminClient(
            self.target,
            api_key=self.admin_key,
            act_as_tenant=act_as_tenant,
            timeout_s=CALL_TIMEOUT_S,
        )

    def client(self, api_key: str | None, **metadata: str) -> SchedulerClient:
        return SchedulerClient(
            self.target,
            api_key=api_key,
            metadata={k.replace("_", "-"): v for k, v in metadata.items()},
            timeout_s=CALL_TIMEOUT_S,
        )

    async def key(
        self,
        *roles: str,
        tenant: str = "default",
        actions: Sequence[str] = (),
        capabilities: Sequence[str] = (),
    ) -> tuple[str, str]:
        """A new key of `tenant` with `roles`: (key_id, secret)."""
        async with self.admin(act_as_tenant=tenant if tenant != "default" else "") as admin:
            made = await admin.create_api_key(
                [ROLE[role] for role in roles],
                agent_actions=actions,
                agent_capabilities=capabilities,
            )
        return made.key.key_id, made.secret

    async def revoke(self, key_id: str, *, tenant: str = "default") -> None:
        async with self.admin(act_as_tenant=tenant if tenant != "default" else "") as admin:
            await admin.revoke_api_key(key_id)


async def start_secure(settings: Settings) -> tuple[SchedulerServer, int]:
    server = SchedulerServer(settings)
    port = await server.start("127.0.0.1:0")
    return server, port


@contextlib.asynccontextmanager
async def secure_in_store(
    store: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    *,
    database_url: str = "",
    **overrides: Any,
) -> AsyncIterator[SecureScheduler]:
    """A scheduler with authentication on in `store` (sqlite: embedded; postgres: a fresh
    migrated database of the test, or the empty `database_url`, migrated here). Without a local
    admin key (the distributed mode and JWTs configured make none) one is bootstrapped as `cpa
    keys create --bootstrap` does."""
    if store == "postgres":
        database_url = database_url or request.getfixturevalue("postgres_database")
        migrate(database_url)
        overrides = {
            "database_url": database_url,
            "page_token_secrets": PAGE_TOKEN_SECRETS,
            **overrides,
        }
    server, port = await start_secure(secure_settings(tmp_path / "data", **overrides))
    try:
        if server.local_admin_key is None:  # distributed, or JWTs configured: none made
            made = await create_local_admin_key(
                server._components.backends.store,  # type: ignore[union-attr]
                tmp_path / "bootstrap",
                tenant="default",
            )
            assert made is not None
            admin_key = made[0]
        else:
            admin_key = server.local_admin_key[0]
        yield SecureScheduler(server=server, port=port, admin_key=admin_key)
    finally:
        await server.stop(grace_s=0)


@pytest.fixture(params=STORES)
async def secure_both(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SecureScheduler]:
    """`secure`, once embedded (SQLite) and once on PostgreSQL."""
    async with secure_in_store(request.param, request, tmp_path) as scheduler:
        yield scheduler


@pytest.fixture
async def secure(tmp_path: Path) -> AsyncIterator[SecureScheduler]:
    """An embedded scheduler with authentication on; its first start made the admin key."""
    server, port = await start_secure(secure_settings(tmp_path / "data"))
    try:
        assert server.local_admin_key is not None
        yield SecureScheduler(server=server, port=port, admin_key=server.local_admin_key[0])
    finally:
        await server.stop(grace_s=1.0)


# No agent runs in these tests: a job stays pending, its watch open until the job is cancelled.
PENDING = job_pb2.JobSpec(todos=job_pb2.TodoList(todos=[todo("a", "noop")]))


class Watch:
    """One WatchJob stream, read in a task: its events, and how it ended."""

    def __init__(self, client: SchedulerClient, job_id: str) -> None:
        self.events: list[job_event_pb2.JobEvent] = []
        self.first = asyncio.Event()
        self.task = asyncio.create_task(self._read(client, job_id))

    async def _read(self, client: SchedulerClient, job_id: str) -> CpaError | None:
        try:
            async for event in client.watch_job(job_id):
                self.events.append(event)
                self.first.set()
        except CpaError as error:
            return error
        return None

    async def opened(self) -> None:
        await asyncio.wait_for(self.first.wait(), CALL_TIMEOUT_S)

    async def ended(self) -> CpaError | None:
        return await asyncio.wait_for(self.task, CALL_TIMEOUT_S)


def refusal(error: CpaError) -> tuple[grpc.StatusCode, str]:
    return error.code, error.reason


async def gateway_in_front(start_cli: Any, target: str) -> str:
    """`cpa gateway` in front of an in-process scheduler at `target`; its base URL. Started off
    the event loop: Envoy is ready once its first health check of the scheduler (served on this
    loop) passed."""
    from tests.cli.conftest import start_gateway

    _, match = await asyncio.to_thread(start_gateway, start_cli, target)
    return f"http://{match['address']}"


@pytest.fixture(params=STORES)
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """The tenant matrix's world (tenant_world.py), in each store."""
    from .tenant_world import open_world  # it imports this module

    async with open_world(request.param, request, tmp_path) as opened:
        yield opened
