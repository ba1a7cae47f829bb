"""The credential `cpa` commands send: $CPA_API_KEY, else, for a server on this machine, the
local admin key `cpa serve` made at its first start (<data dir>/local-admin.key, read only by
its owner; data dir: $CPA_DATA_DIR or ./data). None: the server must run with authentication
off (--insecure-local). docs/SECURITY.md.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from cpa_scheduler.security.local_admin import LOCAL_ADMIN_KEY_FILE

API_KEY_ENV = "CPA_API_KEY"
DATA_DIR_ENV = "CPA_DATA_DIR"


def _is_loopback(server: str) -> bool:
    host = server.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_admin_key_path() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or "data") / LOCAL_ADMIN_KEY_FILE


def api_key_for(server: str) -> str | None:
    """The credential to send to `server`, or None."""
    if key := os.environ.get(API_KEY_ENV, "").strip():
        return key
    if not _is_loopback(server):
        return None
    try:
        return local_admin_key_path().read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None
