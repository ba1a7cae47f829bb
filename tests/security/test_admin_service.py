"""AdminService over real gRPC, in the embedded store and in PostgreSQL: a key is created with
its secret shown once, listed newest first without secret, works for what its role allows,
and once revoked (idempotently) is refused; an admin manages another tenant's keys only by
acting for it explicitly."""

from __future__ import annotations

import grpc
import pytest

from cpa.admin.v1 import admin_service_pb2 as admin_pb
from cpa.scheduler.v1 import job_pb2
from cpa_client import AdminClient, CpaError
from tests.e2e.conftest import todo

from .conftest import CALL_TIMEOUT_S, SecureScheduler


async def test_create_list_use_and_revoke(secure_both: SecureScheduler) -> None:
    scheduler = secure_both
    admin_id = scheduler.admin_key.split("_")[1]
    async with scheduler.admin() as admin:
        first = await admin.create_api_key([admin_pb.ROLE_SUBMITTER], description="billing hook")
        second = await admin.create_api_key(
            [admin_pb.ROLE_AGENT], agent_actions=["noop"], agent_capabilities=["gpu", "browser.*"]
        )
        listed = await admin.list_api_keys()
    # The secret is the key's own, shown in the answer to create only.
    assert first.secret.startswith(f"cpa_{first.key.key_id}_")
    assert first.key.tenant == "default"
    assert list(first.key.roles) == [admin_pb.ROLE_SUBMITTER]
    assert first.key.description == "billing hook"
    assert first.key.created_by == f"key:{admin_id}"
    assert first.key.HasField("create_time")
    assert not first.key.HasField("revoke_time")
    ids = [key.key_id for key in listed]
    # Newest first: the two keys just made, then the admin's own.
    assert ids[:2] == [second.key.key_id, first.key.key_id]
    assert admin_id in ids
    assert all(first.secret.split("_")[-1] not in str(key) for key in listed)
    agent = next(key for key in listed if key.key_id == second.key.key_id)
    assert (list(agent.agent_actions), list(agent.agent_capabilities)) == (
        ["noop"],
        ["gpu", "browser.*"],
    )

    spec = job_pb2.JobSpec(todos=job_pb2.TodoList(todos=[todo("a", "noop")]))
    async with scheduler.client(first.secret) as client:
        await client.schedule_job(spec)  # a submitter's key works

    async with scheduler.admin() as admin:
        revoked = await admin.revoke_api_key(first.key.key_id)
        again = await admin.revoke_api_key(first.key.key_id)  # answered unchanged
        relisted = {key.key_id: key for key in await admin.list_api_keys()}
    assert revoked.HasField("revoke_time")
    assert again.revoke_time == revoked.revoke_time
    assert relisted[first.key.key_id].revoke_time == revoked.revoke_time
    assert not relisted[second.key.key_id].HasField("revoke_time")

    async with scheduler.client(first.secret) as client:
        with pytest.raises(CpaError) as caught:
            await client.schedule_job(spec)
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIAL_REVOKED",
    )


async def test_keys_are_listed_a_page_at_a_time(secure_both: SecureScheduler) -> None:
    scheduler = secure_both
    async with scheduler.admin() as admin:
        for n in range(4):
            await admin.create_api_key([admin_pb.ROLE_VIEWER], description=f"key {n}")
        everything = [key.key_id for key in await admin.list_api_keys()]
        assert len(everything) == 5  # the four and the admin's own
        assert [key.key_id for key in await admin.list_api_keys(page_size=2)] == everything
    _, acme_secret = await scheduler.key("admin", tenant="acme")
    async with scheduler.admin() as admin:
        first = await admin._call(admin._stub.ListApiKeys, admin_pb.ListApiKeysRequest(page_size=2))
        assert [key.key_id for key in first.keys] == everything[:2]
        assert first.next_page_token
        second = await admin._call(
            admin._stub.ListApiKeys,
            admin_pb.ListApiKeysRequest(page_size=2, page_token=first.next_page_token),
        )
        assert [key.key_id for key in second.keys] == everything[2:4]
    altered = ("A" if first.next_page_token[0] != "A" else "B") + first.next_page_token[1:]
    for secret, request, field, reason in (
        # acme's admin cannot use the default tenant's token, nor anyone an altered one.
        (
            acme_secret,
            admin_pb.ListApiKeysRequest(page_token=first.next_page_token),
            "page_token",
            "INVALID_PAGE_TOKEN",
        ),
        (
            scheduler.admin_key,
            admin_pb.ListApiKeysRequest(page_token=altered),
            "page_token",
            "INVALID_PAGE_TOKEN",
        ),
        (
            scheduler.admin_key,
            admin_pb.ListApiKeysRequest(page_size=-1),
            "page_size",
            "INVALID_FIELD",
        ),
    ):
        async with AdminClient(scheduler.target, api_key=secret, timeout_s=CALL_TIMEOUT_S) as c:
            with pytest.raises(CpaError) as caught:
                await c._call(c._stub.ListApiKeys, request)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.reason == reason
        assert [v.field for v in caught.value.field_violations] == [field]


async def test_keys_of_another_tenant_only_by_acting_for_it(secure_both: SecureScheduler) -> None:
    scheduler = secure_both
    key_id, secret = await scheduler.key("admin", tenant="acme")
    async with scheduler.admin(act_as_tenant="acme") as admin:
        assert [key.key_id for key in await admin.list_api_keys()] == [key_id]
    async with scheduler.admin() as admin:
        assert key_id not in {key.key_id for key in await admin.list_api_keys()}
    # acme's admin sees its tenant's keys, made by the default tenant's admin acting for it.
    async with AdminClient(scheduler.target, api_key=secret, timeout_s=CALL_TIMEOUT_S) as acme:
        [own] = await acme.list_api_keys()
        made = await acme.create_api_key([admin_pb.ROLE_VIEWER])
        await acme.revoke_api_key(made.key.key_id)
    assert own.tenant == "acme"
    assert own.created_by == f"key:{scheduler.admin_key.split('_')[1]}"
    assert made.key.tenant == "acme"


@pytest.mark.parametrize("role", ["viewer", "submitter", "approver", "operator", "agent"])
async def test_only_admins_manage_keys(secure: SecureScheduler, role: str) -> None:
    _, secret = await secure.key(role, actions=["noop"] if role == "agent" else ())
    async with AdminClient(secure.target, api_key=secret, timeout_s=CALL_TIMEOUT_S) as client:
        for call in (
            client.list_api_keys(),
            client.create_api_key([admin_pb.ROLE_ADMIN]),
            client.revoke_api_key(secure.admin_key.split("_")[1]),
        ):
            with pytest.raises(CpaError) as caught:
                await call
            assert (caught.value.code, caught.value.reason) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "PERMISSION_DENIED",
            )
    # The admin's key is untouched by those attempts.
    async with secure.admin() as admin:
        assert all(not key.HasField("revoke_time") for key in await admin.list_api_keys())
