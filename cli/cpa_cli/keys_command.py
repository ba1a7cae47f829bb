"""`cpa keys create|list|revoke`: API keys and agent tokens (AdminService; docs/SECURITY.md).

`--bootstrap` creates a key in the store directly (CPA_DATABASE_URL, else the embedded store
under CPA_DATA_DIR, which no server may hold then): the first admin key of a distributed
deployment, which has no local admin key. `--secret-file` writes the secret to a file instead of
printing it; with `--bootstrap` a file that already holds a valid key of the same kind is kept,
so a deployment's one-shot step (docker-compose.yml) can run at every start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from cpa.admin.v1 import admin_service_pb2 as pb
from cpa_client import AdminClient
from cpa_scheduler.api.admin_servicer import ROLE_TO_PROTO, key_to_proto, new_key
from cpa_scheduler.backends import open_store
from cpa_scheduler.domain import DomainError
from cpa_scheduler.security import Role
from cpa_scheduler.security.api_keys import ApiKey, ApiKeyStore, parse_key
from cpa_scheduler.settings import Settings
from cpa_scheduler.storage import DataDirectoryInUseError
from cpa_scheduler.storage.data_dir import FILE_MODE

from .common import CliError, add_json_option, add_server_option, client_tls, emit, warn
from .credentials import api_key_for

ROLE_NAMES = [role.value for role in Role]


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "keys",
        help="create, list and revoke API keys and agent tokens",
        description="Manage the API keys and agent tokens of a tenant (AdminService; role admin). "
        "The credential used is $CPA_API_KEY, else the local admin key of a server on this "
        "machine (<data dir>/local-admin.key).",
    )
    actions = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="create a key; its secret is printed once")
    create.add_argument(
        "--role", action="append", required=True, choices=ROLE_NAMES, help="repeatable"
    )
    create.add_argument("--description", default="", help="what the key is for")
    create.add_argument(
        "--action",
        action="append",
        default=[],
        metavar="PATTERN",
        help="agent tokens: an action its agents may advertise (fnmatch, `*` any); repeatable",
    )
    create.add_argument(
        "--capability",
        action="append",
        default=[],
        metavar="PATTERN",
        help="agent tokens: a capability its agents may advertise; repeatable",
    )
    create.add_argument(
        "--bootstrap",
        action="store_true",
        help="write to the store directly, without a server or credential (the first admin key "
        "of a distributed deployment; $CPA_DATABASE_URL)",
    )
    create.add_argument(
        "--secret-file",
        type=Path,
        metavar="FILE",
        help="write the secret to FILE (mode 0600) instead of printing it; with --bootstrap, a "
        "FILE that already holds a valid key of this tenant, roles and agent scope is kept and "
        "nothing is created; without, an existing FILE is refused",
    )
    _common(create, "the key")
    create.set_defaults(run=_runner(_create))

    listing = actions.add_parser("list", help="list the tenant's keys (never their secrets)")
    _common(listing, "the keys")
    listing.set_defaults(run=_runner(_list))

    revoke = actions.add_parser("revoke", help="revoke a key (refused within seconds)")
    revoke.add_argument("key_id", metavar="KEY_ID")
    _common(revoke, "the revoked key")
    revoke.set_defaults(run=_runner(_revoke))


def _common(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--tenant",
        default="",
        metavar="T",
        help="the tenant whose keys these are (default: the credential's; another one acts for "
        "it, which needs an admin or operator credential)",
    )
    add_server_option(parser)
    add_json_option(parser, what)


def _runner(command: Any) -> Any:
    def run(arguments: argparse.Namespace) -> int:
        result: int = asyncio.run(command(arguments))
        return result

    return run


def _client(arguments: argparse.Namespace) -> AdminClient:
    return AdminClient(
        arguments.server,
        tls=client_tls(arguments),
        api_key=api_key_for(arguments.server),
        act_as_tenant=arguments.tenant,
    )


def _print_key(key: pb.ApiKey, arguments: argparse.Namespace) -> None:
    if arguments.json:
        emit(json_format.MessageToJson(key, indent=None))
        return
    roles = ",".join(pb.Role.Name(r).removeprefix("ROLE_").lower() for r in key.roles)
    state = (
        "revoked " + key.revoke_time.ToDatetime(UTC).isoformat()
        if key.HasField("revoke_time")
        else "valid"
    )
    scope = ""
    if key.agent_actions or key.agent_capabilities:
        scope = (
            f"  actions={','.join(key.agent_actions)}"
            f" capabilities={','.join(key.agent_capabilities) or '-'}"
        )
    emit(f"{key.key_id}  {key.tenant}  {roles}  {state}  {key.description!r}{scope}")


async def _create(arguments: argparse.Namespace) -> int:
    secret_file: Path | None = arguments.secret_file
    if (
        secret_file is not None
        and not arguments.bootstrap
        and _read_secret(secret_file) is not None
    ):
        raise CliError(f"keys create: {secret_file} exists; remove it or name another file")
    if arguments.bootstrap:
        response = await _bootstrap(arguments)
    else:
        roles = [ROLE_TO_PROTO[Role(name)] for name in arguments.role]
        async with _client(arguments) as client:
            response = await client.create_api_key(
                roles,
                description=arguments.description,
                agent_actions=arguments.action,
                agent_capabilities=arguments.capability,
            )
        if secret_file is not None:
            _write_secret(secret_file, response.secret)
    if secret_file is not None:
        response = pb.CreateApiKeyResponse(key=response.key)  # the secret stays in the file
    if arguments.json:
        emit(json_format.MessageToJson(response, indent=None))
        return 0
    _print_key(response.key, arguments)
    if secret_file is None:
        emit(f"secret {response.secret}")
        emit("(shown once: the server keeps only its hash)")
    return 0


async def _bootstrap(arguments: argparse.Namespace) -> pb.CreateApiKeyResponse:
    settings = Settings()
    try:  # the server's own checks (roles, agent scope), before any store is opened
        key, secret = new_key(
            pb.CreateApiKeyRequest(
                roles=[ROLE_TO_PROTO[Role(name)] for name in arguments.role],
                description=arguments.description or "bootstrap key",
                agent_actions=arguments.action,
                agent_capabilities=arguments.capability,
            ),
            tenant=arguments.tenant or settings.default_tenant,
            created_by="bootstrap",
            now=datetime.now(UTC),
        )
    except DomainError as error:
        raise CliError(f"keys create: {error}") from None
    try:
        store = await open_store(settings)
    except DataDirectoryInUseError as error:
        raise CliError(f"keys create --bootstrap: {error}; stop the server first") from None
    try:
        if arguments.secret_file is not None:
            kept = await _kept_key(
                store, arguments.secret_file, _read_secret(arguments.secret_file), key
            )
            if kept is not None:
                warn(f"keys create: {arguments.secret_file} holds valid key {kept.key_id}: kept")
                return pb.CreateApiKeyResponse(key=key_to_proto(kept))
            # Written before the key is stored: a key nobody can read back would be useless.
            _write_secret(arguments.secret_file, secret)
        await store.create_api_key(key)
    finally:
        await store.close()
    return pb.CreateApiKeyResponse(key=key_to_proto(key), secret=secret)


async def _kept_key(
    store: ApiKeyStore, path: Path, secret: str | None, wanted: ApiKey
) -> ApiKey | None:
    """The key `path` holds (`secret`) when the store has it, unrevoked, and it is of `wanted`'s
    tenant, roles and agent scope; None when there is none to keep (no file, or a key that is
    unknown or revoked: it is replaced). A valid key of another kind is refused, not replaced."""
    key_id = parse_key(secret) if secret else None
    key = await store.get_api_key(key_id) if key_id else None
    if secret is None or key is None or key.revoked or not key.matches(secret):
        return None
    kind = (key.tenant, key.roles, key.agent_actions, key.agent_capabilities)
    if kind != (wanted.tenant, wanted.roles, wanted.agent_actions, wanted.agent_capabilities):
        raise CliError(
            f"keys create: {path} holds valid key {key.key_id} of another tenant, roles or "
            "agent scope; revoke it and remove the file, or name another file"
        )
    return key


def _read_secret(path: Path) -> str | None:
    """What `path` holds, None when there is no such file."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise CliError(f"keys create: cannot read {path}: {error}") from None


def _write_secret(path: Path, secret: str) -> None:
    """`secret` into `path`, readable by its owner only, replacing it whole (a reader never
    sees half a key)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            os.write(fd, (secret + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise CliError(f"keys create: cannot write {path}: {error.strerror}") from None


async def _list(arguments: argparse.Namespace) -> int:
    async with _client(arguments) as client:
        for key in await client.list_api_keys():
            _print_key(key, arguments)
    return 0


async def _revoke(arguments: argparse.Namespace) -> int:
    async with _client(arguments) as client:
        _print_key(await client.revoke_api_key(arguments.key_id), arguments)
    return 0
