"""Revocation across replicas: two `cpa serve` processes on one PostgreSQL; a key revoked through
one is refused by the other within CPA_AUTH_CACHE_TTL_S, and the WatchJob streams it opened there
end within that bound too. The first admin key is bootstrapped
into the database with `cpa keys create --bootstrap`, as a distributed deployment does."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from cpa_client import AdminClient, CpaError, SchedulerClient
from tests.fixtures.cluster import Cluster

from .conftest import PENDING, ROLE, Watch

TTL_S = 1.0


async def _list_jobs(target: str, key: str) -> None:
    async with SchedulerClient(target, api_key=key, timeout_s=10) as client:
        _ = [job async for job in client.list_jobs()]


async def test_a_key_revoked_on_one_replica_is_refused_by_the_other_within_the_ttl(
    cluster: Cluster,
) -> None:
    cluster.settings.update(CPA_INSECURE_LOCAL="false", CPA_AUTH_CACHE_TTL_S=str(TTL_S))
    admin_key = cluster.bootstrap_admin_key()
    first, second = cluster.replica("r1"), cluster.replica("r2")
    async with AdminClient(first.target, api_key=admin_key) as admin:
        made = await admin.create_api_key([ROLE["viewer"]], description="revoked soon")
    viewer = made.secret
    await _list_jobs(second.target, viewer)  # valid on r2, and cached there
    async with AdminClient(first.target, api_key=admin_key) as admin:
        await admin.revoke_api_key(made.key.key_id)
    revoked_at = time.monotonic()
    with pytest.raises(CpaError) as caught:
        await _list_jobs(first.target, viewer)  # the revoking replica: at once
    assert caught.value.reason == "CREDENTIAL_REVOKED"
    refused: CpaError | None = None
    async with asyncio.timeout(TTL_S + 5):
        while refused is None:
            try:
                await _list_jobs(second.target, viewer)
            except CpaError as error:
                refused = error
    elapsed_s = time.monotonic() - revoked_at
    assert (refused.code, refused.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIAL_REVOKED")
    # Within the TTL (and the time of one call).
    assert elapsed_s < TTL_S + 0.5


async def test_a_key_revoked_on_one_replica_ends_its_watch_on_the_other_within_the_ttl(
    cluster: Cluster,
) -> None:
    cluster.settings.update(CPA_INSECURE_LOCAL="false", CPA_AUTH_CACHE_TTL_S=str(TTL_S))
    admin_key = cluster.bootstrap_admin_key()
    first, second = cluster.replica("r1"), cluster.replica("r2")
    async with AdminClient(first.target, api_key=admin_key) as admin:
        made = await admin.create_api_key([ROLE["viewer"]], description="revoked soon")
    async with SchedulerClient(first.target, api_key=admin_key, timeout_s=10) as client:
        job_id = (await client.schedule_job(PENDING)).job.job_id  # no agent: it stays pending
    async with SchedulerClient(second.target, api_key=made.secret, timeout_s=10) as viewer:
        watch = Watch(viewer, job_id)
        await watch.opened()
        async with AdminClient(first.target, api_key=admin_key) as admin:
            await admin.revoke_api_key(made.key.key_id)
        revoked_at = time.monotonic()
        error = await watch.ended()
    elapsed_s = time.monotonic() - revoked_at
    assert error is not None
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIAL_REVOKED")
    # The bound a new call has on that replica: the TTL (and the time of one check).
    assert elapsed_s < TTL_S + 0.5
