"""Hostile AdminService calls against a real server with authentication on, in the embedded
store and in PostgreSQL (whose text refuses NUL: a value the server does not check reaches it
as an INTERNAL): every bad input gets INVALID_ARGUMENT with an ErrorInfo reason and a BadRequest
naming the field (or NOT_FOUND for another tenant's key), never INTERNAL, UNKNOWN or a hang;
unknown fields forged into a request (a `tenant`, say) change nothing; replies show only the
acting tenant's keys.

The server runs in the test's event loop; the hostile client (synchronous, as the rest of the
suite's) runs in a worker thread, so a call that blocks shows as a deadline, not a stall.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from cpa.admin.v1 import admin_service_pb2 as pb
from tests.fixtures.cluster import create_database, drop_database
from tests.security.conftest import STORES, SecureScheduler, secure_in_store

from .admin_requests import (
    ADMIN,
    ADMIN_RPCS,
    INVALID_CASES,
    OTHER_TENANT,
    AdminCall,
    admin_call,
    check_admin_reply,
)
from .arena import CALL_TIMEOUT_S
from .calls import Outcome, call_scheduler, judge, rich_status
from .strategies import KNOWN
from .test_hostile_input import HOSTILE

# Per RPC and store; the module takes about 25 s on 2 cores when nothing is found.
EXAMPLES = {"mutated": 25, "random": 15, "raw": 10}


@dataclass
class AdminTarget:
    scheduler: SecureScheduler
    other_key_id: str
    channel: grpc.Channel

    def make(self, call: AdminCall) -> Outcome:
        return call_scheduler(
            self.channel,
            call,
            service=ADMIN,
            metadata=call.with_credential(self.scheduler.admin_key),
            timeout_s=CALL_TIMEOUT_S,
        )

    def judge(self, call: AdminCall) -> Outcome:
        outcome = self.make(call)
        judge(call, outcome)
        check_admin_reply(call, outcome, other_key_id=self.other_key_id)
        return outcome


# One server per store for the module: a PostgreSQL database costs seconds to create and
# migrate. The tests share it; none of them revokes a key it did not make.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=STORES)
async def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[AdminTarget]:
    database_url = ""
    if request.param == "postgres":
        server_url = request.getfixturevalue("postgres_server_url")
        database_url = create_database(server_url)
        request.addfinalizer(lambda: drop_database(server_url, database_url))
    tmp_path = tmp_path_factory.mktemp("admin")
    async with secure_in_store(
        request.param, request, tmp_path, database_url=database_url
    ) as scheduler:
        other_key_id, _ = await scheduler.key("viewer", tenant=OTHER_TENANT)
        saved = list(KNOWN.strings)
        KNOWN.strings[:] = [other_key_id, OTHER_TENANT, "default"]
        channel = grpc.insecure_channel(scheduler.target)
        try:
            yield AdminTarget(scheduler, other_key_id, channel)
        finally:
            channel.close()
            KNOWN.strings[:] = saved


def _refusal(outcome: Outcome) -> tuple[str, str, list[str]]:
    """(code, ErrorInfo reason, BadRequest fields) of a refused call."""
    status = rich_status(outcome)
    assert status is not None, outcome.describe()
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    for detail in status.details:
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(bad.DESCRIPTOR):
            detail.Unpack(bad)
    return outcome.code.name, info.reason, [v.field for v in bad.field_violations]


@pytest.mark.timeout(300)
async def test_explicit_bad_input_names_its_field(target: AdminTarget) -> None:
    """Each case of INVALID_CASES (one server for all: starting one costs seconds)."""
    problems = []
    for what, request, field, reason in INVALID_CASES:
        rpc = "CreateApiKey" if isinstance(request, pb.CreateApiKeyRequest) else "RevokeApiKey"
        outcome = await asyncio.to_thread(target.judge, AdminCall(rpc, request, None, what))
        got = _refusal(outcome)
        if got != ("INVALID_ARGUMENT", reason, [field] if field else []):
            problems.append(f"{what}: {got} {outcome.describe()}")
        if len(outcome.details.encode()) > 1024:
            problems.append(f"{what}: the refusal echoes the input")
    assert not problems, "\n".join(problems)


async def test_a_pasted_secret_as_key_id_is_refused_without_echo(target: AdminTarget) -> None:
    _, secret = await target.scheduler.key("viewer")
    call = AdminCall("RevokeApiKey", pb.RevokeApiKeyRequest(key_id=secret), None, "a secret")
    outcome = await asyncio.to_thread(target.judge, call)
    assert _refusal(outcome) == ("INVALID_ARGUMENT", "INVALID_FIELD", ["key_id"])
    assert secret not in outcome.details
    assert secret.split("_")[-1] not in str(outcome.trailers)


async def test_another_tenants_key_is_not_found_and_stays_valid(target: AdminTarget) -> None:
    for key_id in (target.other_key_id, "0123456789ab"):
        call = AdminCall("RevokeApiKey", pb.RevokeApiKeyRequest(key_id=key_id), None, "foreign")
        outcome = await asyncio.to_thread(target.judge, call)
        assert _refusal(outcome) == ("NOT_FOUND", "API_KEY_NOT_FOUND", [])
        assert target.other_key_id not in outcome.details
    async with target.scheduler.admin(act_as_tenant=OTHER_TENANT) as admin:
        [key] = await admin.list_api_keys()
    assert key.key_id == target.other_key_id
    assert not key.HasField("revoke_time")


def _unknown_field(number: int, text: str) -> bytes:
    """A length-delimited field `number` holding `text` (a field the message does not have)."""
    data = text.encode()
    return bytes([number << 3 | 2, len(data)]) + data


async def test_forged_unknown_fields_change_nothing(target: AdminTarget) -> None:
    """A client that sends fields of ApiKey (tenant = 2, created_by = 5, revoke time) inside the
    request: ignored as unknown fields; the key is the caller's tenant's, made by the caller."""
    body = (
        pb.CreateApiKeyRequest(roles=[pb.ROLE_VIEWER]).SerializeToString()
        + _unknown_field(9, OTHER_TENANT)
        + _unknown_field(15, "key:someone-else")
    )
    outcome = await asyncio.to_thread(target.judge, AdminCall("CreateApiKey", body, None, "forged"))
    assert outcome.code == grpc.StatusCode.OK, outcome.describe()
    [made] = outcome.responses
    assert made.key.tenant == "default"
    assert made.key.created_by.startswith("key:")
    assert made.key.created_by != "key:someone-else"
    listed = await asyncio.to_thread(
        target.judge,
        AdminCall("ListApiKeys", _unknown_field(1, OTHER_TENANT), None, "forged tenant"),
    )
    assert listed.code == grpc.StatusCode.OK
    assert {key.tenant for key in listed.responses[0].keys} == {"default"}


async def test_hostile_tenant_metadata(target: AdminTarget) -> None:
    long_name = "t" * 4_000
    cases = [
        (
            AdminCall("ListApiKeys", pb.ListApiKeysRequest(), long_name, "long act-as"),
            "INVALID_ARGUMENT",
        ),
        (
            AdminCall(
                "ListApiKeys",
                pb.ListApiKeysRequest(),
                OTHER_TENANT,
                "tenant header",
                "",
                "x-cpa-tenant",
            ),
            "PERMISSION_DENIED",
        ),
        (AdminCall("ListApiKeys", pb.ListApiKeysRequest(), OTHER_TENANT, "act-as"), "OK"),
    ]
    for call, code in cases:
        outcome = await asyncio.to_thread(target.judge, call)
        assert outcome.code.name == code, (call, outcome.describe())


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("rpc", "how"),
    [(r, h) for r in ADMIN_RPCS for h in EXAMPLES],
)
async def test_hostile_requests(target: AdminTarget, rpc: str, how: str) -> None:
    strategy = admin_call(rpc, how, other_key_id=target.other_key_id)

    @settings(HOSTILE, max_examples=EXAMPLES[how])
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        target.judge(data.draw(strategy, label="call"))

    await asyncio.to_thread(run)
    # And the server still answers as it should.
    listed = await asyncio.to_thread(
        target.make, AdminCall("ListApiKeys", pb.ListApiKeysRequest(), None, "after")
    )
    assert listed.code == grpc.StatusCode.OK
