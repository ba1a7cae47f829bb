"""API keys as rows of either store (the `api_keys` table), and back."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cpa_scheduler.security.api_keys import ApiKey, roles_from_text, roles_text

COLUMNS = (
    "key_id",
    "tenant",
    "roles",
    "secret_sha256",
    "description",
    "created_by",
    "agent_actions_json",
    "agent_capabilities_json",
    "create_time",
    "revoke_time",
)


def to_row(key: ApiKey) -> dict[str, Any]:
    """The row of `key`, its times as datetimes (each store converts them its own way)."""
    return {
        "key_id": key.key_id,
        "tenant": key.tenant,
        "roles": roles_text(key.roles),
        "secret_sha256": key.secret_sha256,
        "description": key.description,
        "created_by": key.created_by,
        "agent_actions_json": json.dumps(list(key.agent_actions)),
        "agent_capabilities_json": json.dumps(list(key.agent_capabilities)),
        "create_time": key.create_time,
        "revoke_time": key.revoke_time,
    }


def from_row(row: Mapping[str, Any]) -> ApiKey:
    """The key of a row whose times are datetimes already."""
    create_time: datetime = row["create_time"]
    return ApiKey(
        key_id=row["key_id"],
        tenant=row["tenant"],
        roles=roles_from_text(row["roles"]),
        secret_sha256=row["secret_sha256"],
        description=row["description"],
        created_by=row["created_by"],
        agent_actions=tuple(json.loads(row["agent_actions_json"])),
        agent_capabilities=tuple(json.loads(row["agent_capabilities_json"])),
        create_time=create_time,
        revoke_time=row["revoke_time"],
    )
