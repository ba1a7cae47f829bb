"""The audit trail's application layer: refused calls written within bounds, listings, and the
retention prune (docs/AUDIT.md). Entries of changes are written by the store with the change."""

from .log import AuditLog, RefusalBound

__all__ = ["AuditLog", "RefusalBound"]
