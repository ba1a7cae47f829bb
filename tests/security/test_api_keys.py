"""API keys over real gRPC: who gets in, what each role may do, tenants bound to the key.

The server runs with authentication on; every refusal is checked for its code, its reason and
that its message does not repeat the secret presented.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cpa.admin.v1 import admin_service_pb2 as admin_pb
from cpa.scheduler.v1 import job_pb2
from cpa_client import AdminClient, CpaError, SchedulerClient
from cpa_scheduler.security.api_keys import new_secret
from cpa_scheduler.server import SchedulerServer
from tests.e2e.conftest import todo

from .conftest import SecureScheduler, secure_settings, start_secure

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED


def _spec(label: str = "auth") -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        todos=job_pb2.TodoList(todos=[todo("a", "noop")]),
        labels={"suite": label},
    )


async def _jobs(client: SchedulerClient) -> list[job_pb2.Job]:
    return [job async for job in client.list_jobs()]


async def _refused(secure: SecureScheduler, api_key: str | None, **metadata: str) -> CpaError:
    async with secure.client(api_key, **metadata) as client:
        with pytest.raises(CpaError) as caught:
            await _jobs(client)
    if api_key:
        assert api_key not in caught.value.message
    return caught.value


async def test_a_call_without_credentials_is_unauthenticated(secure: SecureScheduler) -> None:
    error = await _refused(secure, None)
    assert (error.code, error.reason) == (UNAUTHENTICATED, "UNAUTHENTICATED")
    assert "authorization: Bearer" in error.message


@pytest.mark.parametrize(
    "credential",
    [
        "not-a-key",
        "cpa_0123456789ab_" + "x" * 43,  # well-formed, unknown
        "cpa_zz_short",  # malformed
    ],
)
async def test_bad_keys_are_credential_invalid(secure: SecureScheduler, credential: str) -> None:
    error = await _refused(secure, credential)
    assert (error.code, error.reason) == (UNAUTHENTICATED, "CREDENTIAL_INVALID")


async def test_a_known_key_id_with_a_wrong_secret_is_refused(secure: SecureScheduler) -> None:
    key_id, secret = await secure.key("viewer")
    forged = f"cpa_{key_id}_{new_secret()[1].rsplit('_', 1)[-1]}"
    assert forged != secret
    error = await _refused(secure, forged)
    assert (error.code, error.reason) == (UNAUTHENTICATED, "CREDENTIAL_INVALID")


async def test_a_revoked_key_is_refused_at_once_on_its_replica(secure: SecureScheduler) -> None:
    key_id, secret = await secure.key("viewer")
    async with secure.client(secret) as client:
        await _jobs(client)  # valid, and now cached
    await secure.revoke(key_id)
    error = await _refused(secure, secret)
    assert (error.code, error.reason) == (UNAUTHENTICATED, "CREDENTIAL_REVOKED")


async def test_x_api_key_works_like_authorization(secure: SecureScheduler) -> None:
    _, secret = await secure.key("viewer")
    async with secure.client(None, x_api_key=secret) as client:
        await _jobs(client)
    # Two different credentials in one call: refused, not guessed between.
    _, other = await secure.key("viewer")
    error = await _refused(secure, secret, x_api_key=other)
    assert (error.code, error.reason) == (UNAUTHENTICATED, "CREDENTIAL_INVALID")


async def test_a_viewer_reads_but_may_not_submit(secure: SecureScheduler) -> None:
    _, viewer = await secure.key("viewer")
    async with secure.client(viewer) as client:
        await _jobs(client)
        with pytest.raises(CpaError) as caught:
            await client.schedule_job(_spec())
    error = caught.value
    assert (error.code, error.reason) == (PERMISSION_DENIED, "PERMISSION_DENIED")
    assert "jobs.submit" in error.message


async def test_only_operators_re_drive_and_only_admins_manage_keys(
    secure: SecureScheduler,
) -> None:
    _, submitter = await secure.key("submitter")
    _, operator = await secure.key("operator")
    async with secure.client(submitter) as client:
        with pytest.raises(CpaError) as caught:
            await client.retry_jobs(filter="", dry_run=True)
    assert caught.value.code == PERMISSION_DENIED
    assert "jobs.redrive" in caught.value.message
    async with secure.client(operator) as client:
        await client.retry_jobs(filter="", dry_run=True)
    async with AdminClient(secure.target, api_key=operator) as admin:
        with pytest.raises(CpaError) as caught:
            await admin.list_api_keys()
    assert caught.value.code == PERMISSION_DENIED
    assert "keys.manage" in caught.value.message


async def test_a_key_sees_only_its_tenants_jobs(secure: SecureScheduler) -> None:
    _, acme = await secure.key("submitter", tenant="acme")
    _, globex = await secure.key("submitter", tenant="globex")
    async with secure.client(acme) as client:
        job = (await client.schedule_job(_spec())).job
        assert (await client.get_job(job.job_id)).job_id == job.job_id
    async with secure.client(globex) as client:
        with pytest.raises(CpaError) as caught:
            await client.get_job(job.job_id)
        assert (caught.value.code, caught.value.reason) == (
            grpc.StatusCode.NOT_FOUND,
            "JOB_NOT_FOUND",
        )
        assert [j.job_id for j in await _jobs(client)] == []


async def test_the_tenant_header_cannot_pick_another_tenant(secure: SecureScheduler) -> None:
    _, acme = await secure.key("submitter", tenant="acme")
    error = await _refused(secure, acme, x_cpa_tenant="globex")
    assert error.code == PERMISSION_DENIED
    assert error.metadata.get("field") == "x-cpa-tenant"
    # Naming its own tenant is harmless.
    async with secure.client(acme, x_cpa_tenant="acme") as client:
        await _jobs(client)


async def test_operators_act_for_another_tenant_explicitly(secure: SecureScheduler) -> None:
    _, acme = await secure.key("submitter", tenant="acme")
    async with secure.client(acme) as client:
        job = (await client.schedule_job(_spec())).job
    _, operator = await secure.key("operator")  # of the default tenant
    async with secure.client(operator, x_cpa_act_as_tenant="acme") as client:
        assert (await client.get_job(job.job_id)).job_id == job.job_id
    _, submitter = await secure.key("submitter")
    error = await _refused(secure, submitter, x_cpa_act_as_tenant="acme")
    assert error.code == PERMISSION_DENIED
    assert "tenants.act_for" in error.message


async def test_health_needs_no_credential(secure: SecureScheduler) -> None:
    async with grpc.aio.insecure_channel(secure.target) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_admin_service_lists_and_refuses_what_it_cannot_do(secure: SecureScheduler) -> None:
    key_id, _ = await secure.key("agent", actions=["noop"], capabilities=["gpu"])
    async with secure.admin() as admin:
        listed = {key.key_id: key for key in await admin.list_api_keys()}
        assert listed[key_id].roles == [admin_pb.ROLE_AGENT]
        assert list(listed[key_id].agent_capabilities) == ["gpu"]
        assert not any(key.HasField("revoke_time") for key in listed.values())
        for roles, actions, field in [
            ([], [], "roles"),
            ([admin_pb.ROLE_AGENT, admin_pb.ROLE_VIEWER], ["noop"], "roles"),
            ([admin_pb.ROLE_AGENT], [], "agent_actions"),
            ([admin_pb.ROLE_VIEWER], ["noop"], "agent_actions"),
            ([admin_pb.ROLE_UNSPECIFIED], [], "roles[0]"),
        ]:
            with pytest.raises(CpaError) as caught:
                await admin.create_api_key(roles, agent_actions=actions)
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.metadata.get("field") == field
        with pytest.raises(CpaError) as caught:
            await admin.revoke_api_key("0123456789ab")
        assert (caught.value.code, caught.value.reason) == (
            grpc.StatusCode.NOT_FOUND,
            "API_KEY_NOT_FOUND",
        )
    # Another tenant's admin cannot revoke it (nor learn it exists).
    _, other_admin = await secure.key("admin", tenant="globex")
    async with AdminClient(secure.target, api_key=other_admin) as admin:
        with pytest.raises(CpaError) as caught:
            await admin.revoke_api_key(key_id)
        assert caught.value.reason == "API_KEY_NOT_FOUND"
        assert key_id not in {key.key_id for key in await admin.list_api_keys()}


async def test_the_local_admin_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server, _ = await start_secure(secure_settings(data_dir))
    try:
        assert server.local_admin_key is not None
        secret, path = server.local_admin_key
    finally:
        await server.stop(grace_s=0)
    assert path == data_dir / "local-admin.key"
    assert path.read_text().strip() == secret
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, _ = await start_secure(secure_settings(data_dir))
    try:
        assert again.local_admin_key is None  # shown once: the first start only
    finally:
        await again.stop(grace_s=0)


async def test_insecure_local_listens_on_loopback_only(tmp_path: Path) -> None:
    server = SchedulerServer(
        secure_settings(tmp_path / "data").model_copy(update={"insecure_local": True})
    )
    with pytest.raises(RuntimeError, match="loopback only"):
        await server.start("0.0.0.0:0")
