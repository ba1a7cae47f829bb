"""The hostile-input suite again with authentication on, once per role (issue 14, "Done when":
"The hostile-input suite of the hardening issue runs again with authentication on, once per
role, and passes").

One arena (a real `cpa serve` with authentication on, a real agent with an agent token running
normal jobs) for the module. Each hostile SchedulerService call carries a real API key of the
role, of the tenant the call names (the default and the two hostile tenants each have one key
per role); a call naming any other tenant carries the default tenant's key and the name in
`x-cpa-tenant`. The expectations:

- a call the role may not make (security/permissions.py) is PERMISSION_DENIED (reason
  PERMISSION_DENIED), whatever the request, raw and undecodable bodies included: it is refused
  before it is decoded, and the refusal names no job or tenant it was aimed at (no leak). The
  one exception is a message over the transport's limit, which gRPC refuses before any server
  code runs (RESOURCE_EXHAUSTED, for every caller alike);
- a call the role may make is judged as in the unauthenticated suite (`calls.judge`: no
  INTERNAL/UNKNOWN, no hang, bad input named, only the caller's tenant's jobs), except that
  naming a tenant that is not the key's is PERMISSION_DENIED on `x-cpa-tenant`;
- agent streams of a role without `agent.connect` are PERMISSION_DENIED before any frame is
  answered;
- and, last, the normal jobs ran as if alone and the store is sound (as in the unauthenticated
  suite).

Budget: the unauthenticated suite (test_hostile_input.py) is the deep one, about 60 requests per
RPC plus the enum sweep; here the question is whether authentication changes any answer, so each
(role, RPC) gets EXAMPLES requests drawn from the same mutated, random and raw strategies: about
700 calls for the 5 roles, well under two minutes on 2 cores. The enum sweep and the targeted
agent-stream and upload tests are not repeated per role: a role changes only whether the call
gets past the interceptor, which these draws already cover for every RPC.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpa.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from cpa_scheduler.security.permissions import allows, required_permission
from cpa_scheduler.security.principal import Role

from .agent_stream import script
from .arena import (
    CALL_TIMEOUT_S,
    DEFAULT_TENANT,
    HOSTILE_TENANTS,
    TENANT_KEY,
    Arena,
    Metadata,
    running_arena,
    seeded_jobs,
    tenant_metadata,
)
from .calls import (
    EXECUTOR,
    SCHEDULER,
    SCHEDULER_RPCS,
    HostileCall,
    Outcome,
    call_scheduler,
    error_details,
    finding,
    judge,
    open_connect,
)
from .consistency import normal_work_problems, server_log_problems, store_problems
from .scheduler_requests import hostile_call, raw_call
from .test_hostile_input import HOSTILE, WATCH_TIMEOUT_S, still_live

ROLES = (Role.VIEWER, Role.SUBMITTER, Role.APPROVER, Role.OPERATOR, Role.ADMIN)
# Requests per (role, RPC), from the mutated, random and raw strategies together.
EXAMPLES = 8
STREAM_EXAMPLES = 6
KEYED_TENANTS = (DEFAULT_TENANT, *HOSTILE_TENANTS)
# gRPC's own refusal of a message over the transport's limit (6 times CPA_MAX_REQUEST_BYTES),
# before the interceptor: no server code ran, so there is nothing to authorize or leak.
TRANSPORT_TOO_LARGE = "SERVER: Received message larger than max"


class RoleKeys:
    """One API key per (role, tenant), made through AdminService by the arena's admin."""

    def __init__(self, channel: grpc.Channel) -> None:
        stub = admin_service_pb2_grpc.AdminServiceStub(channel)
        self.secrets: dict[tuple[Role, str], str] = {}
        for role in ROLES:
            for tenant in KEYED_TENANTS:
                made = stub.CreateApiKey(
                    admin_service_pb2.CreateApiKeyRequest(
                        roles=[getattr(admin_service_pb2, f"ROLE_{role.name}")],
                        description=f"hostile {role.value}",
                    ),
                    metadata=tenant_metadata(None if tenant == DEFAULT_TENANT else tenant),
                    timeout=CALL_TIMEOUT_S,
                )
                self.secrets[(role, tenant)] = made.secret

    def metadata(self, role: Role, tenant: str | None) -> Metadata:
        """The role's key of the tenant the call names; another name goes in x-cpa-tenant
        with the default tenant's key (and is refused)."""
        named = tenant or DEFAULT_TENANT
        if named in KEYED_TENANTS:
            return (("authorization", f"Bearer {self.secrets[(role, named)]}"),)
        secret = self.secrets[(role, DEFAULT_TENANT)]
        return (("authorization", f"Bearer {secret}"), (TENANT_KEY, named))


@pytest.fixture(scope="module")
def secure_arena(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Arena, RoleKeys]]:
    with running_arena(tmp_path_factory.mktemp("hostile-auth"), auth=True) as running:
        yield running, RoleKeys(running.channel)


def _reason_and_field(outcome: Outcome) -> tuple[str, str]:
    info, bad = error_details(outcome)
    fields = [v.field for v in bad.field_violations]
    return info.reason, fields[0] if fields else info.metadata.get("field", "")


def _judge_denied(call: HostileCall, outcome: Outcome, role: Role) -> None:
    if outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED and outcome.details.startswith(
        TRANSPORT_TOO_LARGE
    ):
        return  # the transport's bound, before any server code: the same for every caller
    reason, _ = _reason_and_field(outcome)
    if outcome.code != grpc.StatusCode.PERMISSION_DENIED or reason != "PERMISSION_DENIED":
        raise finding(call.rpc, f"not refused to {role.value}")(
            f"{call.rpc} by a {role.value}: {outcome.describe()} (reason {reason!r}), "
            f"expected PERMISSION_DENIED\n  request: {call!r}"
        )
    leaked = [job_id for job_id, _ in seeded_jobs() if job_id in outcome.details]
    if leaked or any(tenant in outcome.details for tenant in HOSTILE_TENANTS):
        raise finding(call.rpc, "refusal names what it was aimed at")(
            f"{call.rpc} by a {role.value}: {outcome.describe()}\n  request: {call!r}"
        )


def _make(arena: Arena, keys: RoleKeys, role: Role, call: HostileCall) -> None:
    permission = required_permission(f"/{SCHEDULER.full_name}/{call.rpc}")
    allowed = permission is not None and allows(frozenset({role}), permission)
    watch = call.rpc == "WatchJob"
    outcome = call_scheduler(
        arena.channel,
        call,
        timeout_s=WATCH_TIMEOUT_S if watch else CALL_TIMEOUT_S,
        metadata=keys.metadata(role, call.tenant),
    )
    if not allowed:
        _judge_denied(call, outcome, role)
        return
    named = call.tenant or DEFAULT_TENANT
    if named not in KEYED_TENANTS:
        # The tenant comes from the key: naming another one is refused, on that header.
        if (outcome.code, _reason_and_field(outcome)) == (
            grpc.StatusCode.PERMISSION_DENIED,
            ("PERMISSION_DENIED", TENANT_KEY),
        ):
            return
        raise finding(call.rpc, "another tenant named in x-cpa-tenant not refused")(
            f"{call.rpc} by a {role.value}: {outcome.describe()}\n  request: {call!r}"
        )
    judge(call, outcome, still_live=still_live(arena, call))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("rpc", SCHEDULER_RPCS)
@pytest.mark.parametrize("role", ROLES, ids=[role.value for role in ROLES])
def test_hostile_requests_per_role(
    secure_arena: tuple[Arena, RoleKeys], role: Role, rpc: str
) -> None:
    arena, keys = secure_arena
    calls = st.one_of(
        hostile_call(rpc, mutate=True), hostile_call(rpc, mutate=False), raw_call(rpc)
    )

    @settings(HOSTILE, max_examples=EXAMPLES)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        _make(arena, keys, role, data.draw(calls, label="call"))

    run()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("role", [r for r in ROLES if r is not Role.ADMIN], ids=str)
def test_agent_streams_of_roles_without_agent_connect(
    secure_arena: tuple[Arena, RoleKeys], role: Role
) -> None:
    arena, keys = secure_arena
    permission = required_permission(f"/{EXECUTOR.full_name}/Connect")
    assert permission is not None
    assert not allows(frozenset({role}), permission)

    @settings(HOSTILE, max_examples=STREAM_EXAMPLES)
    @given(session=script("random"))
    def run(session: object) -> None:
        outcome = open_connect(
            arena.channel,
            session.encoded(),  # type: ignore[attr-defined]
            metadata=keys.metadata(role, None),
        )
        if outcome.responses:
            raise finding("Connect", f"answered frames of a {role.value}")(
                f"Connect by a {role.value}: {len(outcome.responses)} responses"
            )
        _judge_denied(HostileCall("Connect", b""), outcome, role)

    run()


@pytest.mark.timeout(120)
def test_normal_work_and_store_survived(secure_arena: tuple[Arena, RoleKeys]) -> None:
    """Runs last: as in the unauthenticated suite."""
    arena, _ = secure_arena
    arena.normal.stop()
    problems = normal_work_problems(arena) + server_log_problems(arena) + store_problems(arena)
    assert not problems, f"{len(problems)} problems:\n  " + "\n  ".join(problems)
