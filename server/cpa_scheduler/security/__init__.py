"""Security: who calls (principal), what they may do (permissions), how fast (rate limits),
transport security (TLS). docs/SECURITY.md."""

from .principal import (
    CredentialKind,
    Principal,
    Role,
    current_principal,
    reset_principal,
    set_current_principal,
)

__all__ = [
    "CredentialKind",
    "Principal",
    "Role",
    "current_principal",
    "reset_principal",
    "set_current_principal",
]
