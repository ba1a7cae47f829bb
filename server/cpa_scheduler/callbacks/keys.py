"""The keys that sign callbacks, per tenant: from CPA_CALLBACK_SECRETS_FILE, or one key made on
first start and kept in the data directory (docs/CALLBACKS.md, "Keys")."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cpa_scheduler.settings import Settings
from cpa_scheduler.storage.data_dir import make_private_directory, read_or_create_secret

log = logging.getLogger(__name__)

SECRET_FILE: Final = "callback.secret"
MIN_SECRET_BYTES: Final = 16


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A key: its id (sent as cpa-key-id, so receivers can rotate) and its secret."""

    key_id: str
    secret: bytes


@dataclass(frozen=True, slots=True)
class SigningKeys:
    """The key of each tenant; `default` for tenants without their own."""

    default: SigningKey
    tenants: dict[str, SigningKey]

    def of(self, tenant: str) -> SigningKey:
        return self.tenants.get(tenant, self.default)


def _key(entry: Any, where: str) -> SigningKey:
    if not isinstance(entry, dict) or not isinstance(entry.get("key_id"), str):
        raise ValueError(f"{where}: needs key_id and secret (strings)")
    secret = entry.get("secret")
    if not isinstance(secret, str) or len(secret.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"{where}: secret must be a string of at least {MIN_SECRET_BYTES} bytes")
    if not entry["key_id"] or len(entry["key_id"]) > 64 or not entry["key_id"].isprintable():
        raise ValueError(f"{where}: key_id must be 1-64 printable characters")
    return SigningKey(entry["key_id"], secret.encode())


def load_keys(path: Path) -> SigningKeys:
    """The keys of a secrets file; ValueError saying what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"CPA_CALLBACK_SECRETS_FILE {path}: {error}") from None
    if not isinstance(data, dict) or "default" not in data:
        raise ValueError(f'CPA_CALLBACK_SECRETS_FILE {path}: needs a "default" key')
    tenants = data.get("tenants", {})
    if not isinstance(tenants, dict):
        raise ValueError(f'CPA_CALLBACK_SECRETS_FILE {path}: "tenants" must be an object')
    return SigningKeys(
        default=_key(data["default"], f"{path}: default"),
        tenants={t: _key(e, f"{path}: tenants.{t}") for t, e in tenants.items()},
    )


def signing_keys(settings: Settings, *, distributed: bool) -> SigningKeys:
    """The configured keys; without a file, the data directory's key (the secret is the file's
    text, 64 hex digits), with a warning in the distributed mode, where replicas would
    otherwise sign with different keys."""
    if settings.callback_secrets_file is not None:
        return load_keys(settings.callback_secrets_file)
    make_private_directory(settings.data_dir)
    secret = read_or_create_secret(settings.data_dir / SECRET_FILE).hex().encode()
    if distributed:
        log.warning(
            "CPA_CALLBACK_SECRETS_FILE is not set: this replica signs callbacks with its own "
            "key (%s); set the same file on every replica",
            settings.data_dir / SECRET_FILE,
        )
    key_id = "local-" + hashlib.sha256(secret).hexdigest()[:8]
    return SigningKeys(default=SigningKey(key_id, secret), tenants={})
