"""Refusals of the auth layer are audited (issue 14, "Done when": missing, expired, wrongly
signed, wrong-audience and revoked credentials get UNAUTHENTICATED, an insufficient role
PERMISSION_DENIED, "and both are audited"), in the embedded store and in PostgreSQL, read back
through ListAuditEntries over real gRPC; and a flood of bad credentials writes no more than the
bound.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest

from cpa.admin.v1 import admin_service_pb2 as admin_pb
from cpa.scheduler.v1 import audit_pb2, job_pb2
from cpa_client import AdminClient, CpaError, SchedulerClient
from tests.e2e.conftest import todo

from .conftest import CALL_TIMEOUT_S, STORES, SecureScheduler, secure_in_store

ISSUER = "https://idp.example.test"
AUDIENCE = "cpa-scheduler"
HMAC_SECRET = "a-shared-secret-of-at-least-32-characters!"
JWT_SETTINGS: dict[str, Any] = {
    "jwt_issuer": ISSUER,
    "jwt_audience": AUDIENCE,
    "jwt_algorithms": "HS256",
    "jwt_hmac_secret": HMAC_SECRET,
    "jwt_clock_skew_s": 5.0,
}
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
PER_MINUTE = 6


def _token(*, secret: str = HMAC_SECRET, lifetime_s: float = 300, **claims: object) -> str:
    now = time.time()
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "exp": int(now + lifetime_s),
        "iat": int(now - 600),
        "cpa_tenant": "default",
        "cpa_roles": ["viewer"],
        **claims,
    }
    return jwt.encode(payload, secret, algorithm="HS256")


@pytest.fixture(params=STORES)
async def secure_jwt(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SecureScheduler]:
    async with secure_in_store(
        request.param,
        request,
        tmp_path,
        audit_refusals_per_minute=PER_MINUTE,
        **JWT_SETTINGS,
    ) as scheduler:
        yield scheduler


async def _refusal(scheduler: SecureScheduler, credential: str | None, **metadata: str) -> CpaError:
    async with scheduler.client(credential, **metadata) as client:
        with pytest.raises(CpaError) as caught:
            await client.schedule_job(
                job_pb2.JobSpec(todos=job_pb2.TodoList(todos=[todo("a", "noop")]))
            )
    return caught.value


async def _entries(scheduler: SecureScheduler, *, tenant: str = "") -> list[audit_pb2.AuditEntry]:
    async with SchedulerClient(
        scheduler.target,
        api_key=scheduler.admin_key,
        metadata={"x-cpa-act-as-tenant": tenant} if tenant else None,
        timeout_s=CALL_TIMEOUT_S,
    ) as admin:
        return [entry async for entry in admin.list_audit_entries(action="ScheduleJob")]


async def test_every_kind_of_refusal_leaves_an_audit_entry(secure_jwt: SecureScheduler) -> None:
    scheduler = secure_jwt
    revoked_id, revoked = await scheduler.key("submitter")
    await scheduler.revoke(revoked_id)
    viewer_id, viewer = await scheduler.key("viewer")
    # The five credential-less refusals share one bound (one peer host): PER_MINUTE keeps them.
    cases = [
        ("missing", None, UNAUTHENTICATED, "UNAUTHENTICATED"),
        ("expired", _token(lifetime_s=-600), UNAUTHENTICATED, "CREDENTIAL_EXPIRED"),
        ("wrongly signed", _token(secret="x" * 40), UNAUTHENTICATED, "CREDENTIAL_INVALID"),
        ("wrong audience", _token(aud="someone-else"), UNAUTHENTICATED, "CREDENTIAL_INVALID"),
    ]
    for what, credential, code, reason in cases:
        error = await _refusal(scheduler, credential)
        assert (error.code, error.reason) == (code, reason), what
    revoked_error = await _refusal(scheduler, revoked)
    assert (revoked_error.code, revoked_error.reason) == (UNAUTHENTICATED, "CREDENTIAL_REVOKED")
    denied = await _refusal(scheduler, viewer)
    assert (denied.code, denied.reason) == (PERMISSION_DENIED, "PERMISSION_DENIED")

    entries = await _entries(scheduler)
    assert sorted((e.principal, e.result_code, e.result_reason) for e in entries) == sorted(
        [
            ("unauthenticated", "UNAUTHENTICATED", "UNAUTHENTICATED"),
            ("unauthenticated", "UNAUTHENTICATED", "CREDENTIAL_EXPIRED"),
            ("unauthenticated", "UNAUTHENTICATED", "CREDENTIAL_INVALID"),
            ("unauthenticated", "UNAUTHENTICATED", "CREDENTIAL_INVALID"),
            ("unauthenticated", "UNAUTHENTICATED", "CREDENTIAL_REVOKED"),
            (f"key:{viewer_id}", "PERMISSION_DENIED", "PERMISSION_DENIED"),
        ]
    )
    by_reason = {(e.principal, e.result_reason): e for e in entries}
    for reason in ("UNAUTHENTICATED", "CREDENTIAL_EXPIRED", "CREDENTIAL_INVALID"):
        entry = by_reason[("unauthenticated", reason)]
        assert entry.result_code == "UNAUTHENTICATED"
        assert entry.action == "ScheduleJob"
        assert entry.tenant == "default"
        assert entry.result_message  # says why, never the credential
        assert HMAC_SECRET not in entry.result_message
    role_entry = by_reason[(f"key:{viewer_id}", "PERMISSION_DENIED")]
    assert role_entry.result_code == "PERMISSION_DENIED"
    assert list(role_entry.roles) == ["viewer"]
    assert role_entry.credential_id == viewer_id
    assert "jobs.submit" in role_entry.result_message
    assert viewer not in role_entry.result_message
    # The revoked key is no principal any more: recorded as unauthenticated.
    assert ("unauthenticated", "CREDENTIAL_REVOKED") in by_reason
    assert revoked not in by_reason[("unauthenticated", "CREDENTIAL_REVOKED")].result_message


async def test_a_refusal_is_audited_in_the_tenant_it_concerns(
    secure_both: SecureScheduler,
) -> None:
    scheduler = secure_both
    # A credential-less call naming a tenant: that tenant's admins see the attempt.
    await _refusal(scheduler, None, x_cpa_tenant="acme")
    # An acme key naming another tenant: refused and audited as acme's principal.
    acme_id, acme = await scheduler.key("submitter", tenant="acme")
    error = await _refusal(scheduler, acme, x_cpa_tenant="globex")
    assert (error.code, error.metadata.get("field")) == (PERMISSION_DENIED, "x-cpa-tenant")
    # A submitter acting for another tenant without the permission.
    await _refusal(scheduler, acme, x_cpa_act_as_tenant="globex")
    acme_entries = await _entries(scheduler, tenant="acme")
    assert sorted((e.principal, e.result_code) for e in acme_entries) == [
        (f"key:{acme_id}", "PERMISSION_DENIED"),
        (f"key:{acme_id}", "PERMISSION_DENIED"),
        ("unauthenticated", "UNAUTHENTICATED"),
    ]
    assert await _entries(scheduler, tenant="globex") == []
    assert await _entries(scheduler) == []
    # Accepted calls write nothing (the auth layer audits refusals only).
    async with scheduler.client(acme) as client:
        assert [job async for job in client.list_jobs()] == []
    async with SchedulerClient(
        scheduler.target,
        api_key=scheduler.admin_key,
        metadata={"x-cpa-act-as-tenant": "acme"},
        timeout_s=CALL_TIMEOUT_S,
    ) as admin:
        assert [e async for e in admin.list_audit_entries(action="ListJobs")] == []


async def test_admin_service_refusals_are_audited(secure_both: SecureScheduler) -> None:
    _, operator = await secure_both.key("operator")
    async with AdminClient(secure_both.target, api_key=operator) as admin:
        with pytest.raises(CpaError) as caught:
            await admin.create_api_key([admin_pb.ROLE_ADMIN])
    assert caught.value.code == PERMISSION_DENIED
    async with SchedulerClient(secure_both.target, api_key=secure_both.admin_key) as admin_client:
        [entry] = [
            e
            async for e in admin_client.list_audit_entries(action="CreateApiKey")
            if e.result_code != "OK"  # the operator key's own creation is there too
        ]
    assert (entry.result_code, entry.result_reason) == ("PERMISSION_DENIED", "PERMISSION_DENIED")
    assert "keys.manage" in entry.result_message


async def test_keys_created_and_revoked_are_audited_without_their_secret(
    secure_both: SecureScheduler,
) -> None:
    async with secure_both.admin() as admin:
        created = await admin.create_api_key(
            [admin_pb.ROLE_SUBMITTER, admin_pb.ROLE_VIEWER], description="ci bot"
        )
        revoked = await admin.revoke_api_key(created.key.key_id)
        with pytest.raises(CpaError):  # refused: audited as such, bounded
            await admin.create_api_key([admin_pb.ROLE_AGENT])
    key_id = created.key.key_id
    assert revoked.key_id == key_id
    async with SchedulerClient(secure_both.target, api_key=secure_both.admin_key) as client:
        made = [e async for e in client.list_audit_entries(action="CreateApiKey")]
        gone = [e async for e in client.list_audit_entries(action="RevokeApiKey")]
    ok = [e for e in made if e.result_code == "OK" and key_id in e.result_message]
    assert [(e.reason, e.result_message) for e in ok] == [
        ("ci bot", f"created key {key_id} (submitter, viewer)")
    ]
    assert [(e.result_code, e.result_message) for e in gone] == [
        ("OK", f"revoked key {key_id} (submitter, viewer)")
    ]
    (entry,) = ok
    assert entry.tenant == "default"
    assert entry.principal.startswith("key:")  # the admin who made it
    assert [(e.result_code, e.result_reason) for e in made if e.result_code != "OK"] == [
        ("INVALID_ARGUMENT", "MISSING_FIELD")
    ]
    for listed in (*made, *gone):
        assert created.secret not in listed.result_message
        assert created.secret not in listed.reason


async def test_a_flood_of_bad_credentials_writes_no_more_than_the_bound(
    secure_jwt: SecureScheduler,
) -> None:
    """From one peer host, whatever credential it forges and whatever tenant it names: at most
    PER_MINUTE entries a minute (the rest counted, not written); a principal's own refusals are
    bounded apart from them, so the flood cannot crowd them out."""
    scheduler = secure_jwt
    flood = 40
    tenants = [f"t{index % 8}" for index in range(flood)]
    for index, tenant in enumerate(tenants):
        forged = f"cpa_{index:012x}_{'x' * 43}"
        error = await _refusal(scheduler, forged, x_cpa_tenant=tenant)
        assert error.reason == "CREDENTIAL_INVALID"
    written = [
        entry
        for tenant in sorted(set(tenants))
        for entry in await _entries(scheduler, tenant=tenant)
    ]
    assert len(written) == PER_MINUTE
    assert {entry.principal for entry in written} == {"unauthenticated"}
    # A principal refused after the flood is still recorded.
    viewer_id, viewer = await scheduler.key("viewer")
    await _refusal(scheduler, viewer)
    assert [e.principal for e in await _entries(scheduler)] == [f"key:{viewer_id}"]


@pytest.mark.parametrize("store", STORES)
async def test_rate_limited_calls_are_audited_up_to_the_bound(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A key past its rate limit gets RATE_LIMITED, and its admins see it in the audit trail:
    one entry per refusal up to the bound, never one per call of a flood."""
    async with secure_in_store(
        store,
        request,
        tmp_path,
        rate_limits_enabled=True,
        rate_limit_per_key=3,
        rate_limit_per_ip=0,
        audit_refusals_per_minute=PER_MINUTE,
    ) as scheduler:
        key_id, submitter = await scheduler.key("submitter")
        async with scheduler.client(submitter) as client:
            for _ in range(3):
                [job async for job in client.list_jobs()]
            for _ in range(2 * PER_MINUTE):
                with pytest.raises(CpaError) as refused:
                    [job async for job in client.list_jobs()]
                assert refused.value.reason == "RATE_LIMITED"
        async with SchedulerClient(scheduler.target, api_key=scheduler.admin_key) as admin:
            entries = [e async for e in admin.list_audit_entries(action="ListJobs")]
    assert len(entries) == PER_MINUTE
    for entry in entries:
        assert (entry.result_code, entry.result_reason) == ("RESOURCE_EXHAUSTED", "RATE_LIMITED")
        assert entry.principal == f"key:{key_id}"
        assert entry.credential_id == key_id
        assert "3 calls a minute" in entry.result_message
        assert submitter not in entry.result_message
