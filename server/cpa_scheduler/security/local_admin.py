"""The embedded default: the first start without any credential makes a local admin key.

`cpa serve` on the embedded store, with authentication on and neither a key in the store nor a
JWT issuer configured, creates an admin key of the default tenant, prints it once and keeps it
in `<data_dir>/local-admin.key` (0600, the user's only), where the `cpa` commands of that user
find it when they talk to a loopback server (cli/cpa_cli/credentials.py).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from cpa_scheduler.storage.data_dir import FILE_MODE, make_private_directory

from .api_keys import ApiKey, ApiKeyStore, new_secret
from .principal import Role

LOCAL_ADMIN_KEY_FILE = "local-admin.key"


async def create_local_admin_key(
    keys: ApiKeyStore, data_dir: Path, *, tenant: str
) -> tuple[str, Path] | None:
    """Makes the key when the store has none: its secret (to print once) and the file it is
    kept in; None when keys exist."""
    if await keys.list_api_keys(None, limit=1):
        return None
    key_id, secret, digest = new_secret()
    make_private_directory(data_dir)
    path = data_dir / LOCAL_ADMIN_KEY_FILE
    # Written before the key is stored: a key nobody can read back would be useless.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        os.write(fd, (secret + "\n").encode("ascii"))
    finally:
        os.close(fd)
    await keys.create_api_key(
        ApiKey(
            key_id=key_id,
            tenant=tenant,
            roles=frozenset({Role.ADMIN}),
            secret_sha256=digest,
            description="local admin key, made at the first start",
            created_by="local",
            create_time=datetime.now(UTC),
        )
    )
    return secret, path
