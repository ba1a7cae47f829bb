"""The permission table against the server as it runs: every RPC of every service the server
offers has exactly one rule, every rule names a real RPC, every guarded RPC refuses a call
without credentials, and docs/SECURITY.md shows the table the code has.

A new RPC without a rule fails here (and is refused at run time: the interceptor fails closed).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import grpc
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from cpa_scheduler.security import Role
from cpa_scheduler.security.permissions import (
    METHOD_PERMISSIONS,
    ROLE_PERMISSIONS,
    Permission,
    allows,
)

from .conftest import SecureScheduler

SECURITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "SECURITY.md"


def _served_methods(target: str) -> dict[str, tuple[bool, bool]]:
    """`/pkg.Service/Method` -> (client streaming, server streaming), of every service the
    server's reflection lists (blocking: run it in a thread)."""
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        methods = {}
        for name in database.get_services():
            service = pool.FindServiceByName(name)
            for method in service.methods:
                methods[f"/{service.full_name}/{method.name}"] = (
                    method.client_streaming,
                    method.server_streaming,
                )
    return methods


async def test_every_rpc_of_every_served_service_has_one_rule(secure: SecureScheduler) -> None:
    served = await asyncio.to_thread(_served_methods, secure.target)
    assert "/cpa.admin.v1.AdminService/CreateApiKey" in served
    missing = sorted(set(served) - set(METHOD_PERMISSIONS))
    assert not missing, f"RPCs without a permission rule (security/permissions.py): {missing}"
    # The v1 reflection service is listed only by newer grpcio; its rule is there ahead.
    stale = sorted(
        set(METHOD_PERMISSIONS)
        - set(served)
        - {"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"}
    )
    assert not stale, f"rules for RPCs the server does not offer: {stale}"


async def test_every_guarded_rpc_refuses_a_call_without_credentials(
    secure: SecureScheduler,
) -> None:
    served = await asyncio.to_thread(_served_methods, secure.target)
    async with grpc.aio.insecure_channel(secure.target) as channel:
        for method, (client_streaming, server_streaming) in sorted(served.items()):
            if METHOD_PERMISSIONS[method] is Permission.PUBLIC:
                continue
            code = await _call_without_credentials(
                channel,
                method,
                client_streaming=client_streaming,
                server_streaming=server_streaming,
            )
            assert code == grpc.StatusCode.UNAUTHENTICATED, method


async def _call_without_credentials(
    channel: grpc.aio.Channel, method: str, *, client_streaming: bool, server_streaming: bool
) -> grpc.StatusCode:
    identity = {"request_serializer": None, "response_deserializer": None}
    try:
        if client_streaming:
            multi = channel.stream_stream(method, **identity)
            call = multi(iter([b""]))
            await call.read()
            return await call.code()
        if server_streaming:
            stream = channel.unary_stream(method, **identity)
            reading = stream(b"")
            await reading.read()
            return await reading.code()
        await channel.unary_unary(method, **identity)(b"", timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_roles_grant_what_the_brief_says() -> None:
    viewer, submitter = ROLE_PERMISSIONS[Role.VIEWER], ROLE_PERMISSIONS[Role.SUBMITTER]
    assert Permission.JOBS_SUBMIT not in viewer
    assert viewer < submitter
    assert Permission.JOBS_REDRIVE not in submitter
    assert allows(frozenset({Role.OPERATOR}), Permission.TENANTS_ACT_FOR)
    assert not allows(frozenset({Role.OPERATOR}), Permission.KEYS_MANAGE)
    assert ROLE_PERMISSIONS[Role.AGENT] == {Permission.AGENT_CONNECT}
    # Nobody but an agent (and admin) may open an agent stream.
    assert [r for r in Role if Permission.AGENT_CONNECT in ROLE_PERMISSIONS[r]] == [
        Role.ADMIN,
        Role.AGENT,
    ]


def _doc_table(heading: str) -> dict[str, str]:
    section = SECURITY_DOC.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| (.+?) \|$", section, flags=re.MULTILINE)
    return dict(rows)


def test_the_documented_method_table_is_the_codes() -> None:
    documented = {
        method: permission.strip("`")
        for method, permission in _doc_table("Permissions of every RPC").items()
    }
    assert documented == {m: p.value for m, p in METHOD_PERMISSIONS.items()}


def test_the_documented_role_table_is_the_codes() -> None:
    documented = {
        role: {p.strip(" `") for p in permissions.split(",")}
        for role, permissions in _doc_table("Roles").items()
    }
    assert documented == {
        role.value: {p.value for p in permissions} for role, permissions in ROLE_PERMISSIONS.items()
    }
