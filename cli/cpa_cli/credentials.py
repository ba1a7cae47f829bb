"""The credential `cpa` commands send: $CPA_API_KEY, else the file $CPA_API_KEY_FILE names (a
compose or Kubernetes secret, a key `cpa keys create --secret-file` wrote), else, for a server
on this machine, the local admin key `cpa serve` made at its first start (<data
dir>/local-admin.key, read only by its owner; data dir: $CPA_DATA_DIR or ./data). None: the
server must run with authentication off (--insecure-local). docs/SECURITY.md.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from cpa_scheduler.security.local_admin import LOCAL_ADMIN_KEY_FILE

from .common import CliError

API_KEY_ENV = "CPA_API_KEY"
API_KEY_FILE_ENV = "CPA_API_KEY_FILE"
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
    if path := os.environ.get(API_KEY_FILE_ENV, "").strip():
        # Named on purpose: a file that cannot be read is an error, not a reason to try others.
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise CliError(f"${API_KEY_FILE_ENV}: cannot read {path}: {error}") from None
        if not key:
            raise CliError(f"${API_KEY_FILE_ENV}: {path} is empty")
        return key
    if not _is_loopback(server):
        return None
    try:
        return local_admin_key_path().read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None
