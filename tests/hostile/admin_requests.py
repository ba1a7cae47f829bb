"""Hostile AdminService calls: valid templates per RPC, their mutations, random requests, raw
bodies (reusing scheduler_requests' raw bodies), and hostile tenant metadata; the explicit cases
with the answer each must get; and the checks of a reply beyond `calls.judge`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from hypothesis import strategies as st

from cpa.admin.v1 import admin_service_pb2 as pb

from .calls import HostileCall, Outcome, finding, summarize
from .scheduler_requests import raw_body
from .strategies import message_class, message_of, mutated

ADMIN = pb.DESCRIPTOR.services_by_name["AdminService"]
ADMIN_RPCS = tuple(method.name for method in ADMIN.methods)
ACT_AS_KEY = "x-cpa-act-as-tenant"
TENANT_KEY = "x-cpa-tenant"
# A tenant whose keys the hostile calls aim at (the caller is the default tenant's admin).
OTHER_TENANT = "globex"


def templates(rpc: str, *, other_key_id: str = "0123456789ab") -> list[Message]:
    by_rpc: dict[str, list[Message]] = {
        "CreateApiKey": [
            pb.CreateApiKeyRequest(roles=[pb.ROLE_VIEWER], description="ci"),
            pb.CreateApiKeyRequest(
                roles=[pb.ROLE_AGENT], agent_actions=["noop", "browser.*"], agent_capabilities=["*"]
            ),
            pb.CreateApiKeyRequest(roles=[pb.ROLE_SUBMITTER, pb.ROLE_APPROVER]),
        ],
        "ListApiKeys": [pb.ListApiKeysRequest(), pb.ListApiKeysRequest(page_size=1)],
        "RevokeApiKey": [pb.RevokeApiKeyRequest(key_id=other_key_id)],
    }
    return by_rpc[rpc]


@dataclass(frozen=True)
class AdminCall(HostileCall):
    """A hostile AdminService call; `tenant` is what it names in `metadata_key` (act-as by
    default: an admin may act for another tenant), None for nothing."""

    metadata_key: str = ACT_AS_KEY

    def with_credential(self, secret: str) -> tuple[tuple[str, str], ...]:
        named = () if self.tenant is None else ((self.metadata_key, self.tenant),)
        return (("authorization", f"Bearer {secret}"), *named)

    @property
    def acting_tenant(self) -> str:
        """The tenant the call acts for when it is accepted."""
        return self.tenant if self.tenant and self.metadata_key == ACT_AS_KEY else "default"

    def __repr__(self) -> str:
        named = "" if self.tenant is None else f" {self.metadata_key}={self.tenant[:40]!r}"
        return f"<{self.rpc} [{self.how}]{named} {summarize(self.request)}>"


def _tenants() -> st.SearchStrategy[tuple[str | None, str]]:
    """What a call names: nothing, its own or the other tenant, odd names; by act-as or by
    the tenant header (another tenant's there is refused)."""
    printable = st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40
    )
    names = st.one_of(
        st.none(),
        st.sampled_from(["default", OTHER_TENANT]),
        printable,
        st.just("t" * 4_000),
    )
    return st.tuples(names, st.sampled_from([ACT_AS_KEY, TENANT_KEY]))


def admin_call(rpc: str, how: str, *, other_key_id: str) -> st.SearchStrategy[AdminCall]:
    """`how`: "mutated" (a template with one field hostile), "random" (any request of the
    type), "raw" (invalid UTF-8, cut-off, random bytes)."""
    method = ADMIN.methods_by_name[rpc]
    made = templates(rpc, other_key_id=other_key_id)
    random = message_of(message_class(method.input_type).DESCRIPTOR)
    changed = mutated(made)
    bodies = raw_body(made) if any(m.ByteSize() for m in made) else st.binary(max_size=300)

    @st.composite
    def draw(draw_: st.DrawFn) -> AdminCall:
        tenant, key = draw_(_tenants())
        if how == "mutated":
            mutation = draw_(changed)
            return AdminCall(rpc, mutation.message, tenant, f"mutated {mutation.path}", "", key)
        if how == "random":
            return AdminCall(rpc, draw_(random), tenant, "random", "", key)
        body = draw_(bodies)
        raw, what = body if isinstance(body, tuple) else (body, "random bytes")
        kind = what.split(":")[0].split(" in ")[0]
        return AdminCall(rpc, raw, tenant, f"raw: {what}", kind, key)

    return draw()


def check_admin_reply(call: AdminCall, outcome: Outcome, *, other_key_id: str) -> None:
    """Beyond `judge`: an accepted call shows and makes keys of the tenant it acts for only,
    and another tenant's key is never revoked by the default tenant's admin acting for
    itself."""
    if outcome.code != grpc.StatusCode.OK:
        return
    for response in outcome.responses:
        keys: list[Any] = list(getattr(response, "keys", []))
        if response.HasField("key") if "key" in response.DESCRIPTOR.fields_by_name else False:
            keys.append(response.key)
        foreign = [key.key_id for key in keys if key.tenant != call.acting_tenant]
        if foreign:
            raise finding(call.rpc, "shows another tenant's key")(
                f"{call.rpc}: acting for {call.acting_tenant!r}, answered keys of another "
                f"tenant {foreign[:3]}\n  request: {call!r}"
            )
        revoked_other = call.rpc == "RevokeApiKey" and any(
            key.key_id == other_key_id for key in keys
        )
        if revoked_other and call.acting_tenant != OTHER_TENANT:
            raise finding(call.rpc, "revokes another tenant's key")(
                f"{call.rpc}: revoked {other_key_id} of {OTHER_TENANT}\n  request: {call!r}"
            )


def _create(*roles: int, **fields: object) -> pb.CreateApiKeyRequest:
    """A CreateApiKeyRequest with any role numbers (undeclared ones included)."""
    request = pb.CreateApiKeyRequest(**fields)  # type: ignore[arg-type]
    request.roles.extend(roles)  # type: ignore[arg-type]
    return request


HUGE = 5 * 1024 * 1024  # over CPA_MAX_REQUEST_BYTES (4 MiB by default)
# (what, request, the field the refusal must name ("": the whole request), its reason): every
# bad input of the explicit cases is INVALID_ARGUMENT.
INVALID_CASES: list[tuple[str, Message, str, str]] = [
    ("no role", _create(), "roles", "MISSING_FIELD"),
    ("ROLE_UNSPECIFIED", _create(0), "roles[0]", "INVALID_FIELD"),
    ("role 99", _create(99), "roles[0]", "INVALID_FIELD"),
    ("role -1", _create(-1), "roles[0]", "INVALID_FIELD"),
    ("second role 2**31-1", _create(1, 2**31 - 1), "roles[1]", "INVALID_FIELD"),
    ("AGENT and VIEWER", _create(6, 1, agent_actions=["x"]), "roles", "INVALID_FIELD"),
    ("agent without actions", _create(6), "agent_actions", "MISSING_FIELD"),
    (
        "capabilities on a viewer key",
        _create(1, agent_capabilities=["gpu"]),
        "agent_capabilities",
        "INVALID_FIELD",
    ),
    ("description 257 chars", _create(1, description="d" * 257), "description", "INVALID_FIELD"),
    ("NUL in description", _create(1, description="a\x00b"), "description", "INVALID_FIELD"),
    ("escape in description", _create(1, description="\x1b[2J"), "description", "INVALID_FIELD"),
    ("description of 5 MiB", _create(1, description="d" * HUGE), "", "PAYLOAD_TOO_LARGE"),
    ("empty pattern", _create(6, agent_actions=["noop", ""]), "agent_actions[1]", "INVALID_FIELD"),
    (
        "pattern 129 chars",
        _create(6, agent_actions=["a" * 129]),
        "agent_actions[0]",
        "INVALID_FIELD",
    ),
    (
        "newline in capability",
        _create(6, agent_actions=["*"], agent_capabilities=["a\nb"]),
        "agent_capabilities[0]",
        "INVALID_FIELD",
    ),
    ("257 patterns", _create(6, agent_actions=["a"] * 257), "agent_actions", "INVALID_FIELD"),
    (
        "257 capabilities",
        _create(6, agent_actions=["*"], agent_capabilities=["c"] * 257),
        "agent_capabilities",
        "INVALID_FIELD",
    ),
    (
        "empty capability",
        _create(6, agent_actions=["*"], agent_capabilities=[""]),
        "agent_capabilities[0]",
        "INVALID_FIELD",
    ),
    ("actions on a viewer key", _create(1, agent_actions=["*"]), "agent_actions", "INVALID_FIELD"),
    # Not printable for the comment's rule (format and separator characters too).
    ("zero-width joiner", _create(1, description="a\u200db"), "description", "INVALID_FIELD"),
    ("line separator", _create(6, agent_actions=["a\u2028"]), "agent_actions[0]", "INVALID_FIELD"),
    ("no key_id", pb.RevokeApiKeyRequest(), "key_id", "MISSING_FIELD"),
    (
        "key_id 100 000 chars",
        pb.RevokeApiKeyRequest(key_id="a" * 100_000),
        "key_id",
        "INVALID_FIELD",
    ),
    ("NUL key_id", pb.RevokeApiKeyRequest(key_id="\x00" * 12), "key_id", "INVALID_FIELD"),
    ("upper-case key_id", pb.RevokeApiKeyRequest(key_id="ABCDEF012345"), "key_id", "INVALID_FIELD"),
    ("SQL in key_id", pb.RevokeApiKeyRequest(key_id="' OR '1'='1"), "key_id", "INVALID_FIELD"),
    ("key_id of 5 MiB", pb.RevokeApiKeyRequest(key_id="k" * HUGE), "", "PAYLOAD_TOO_LARGE"),
]
