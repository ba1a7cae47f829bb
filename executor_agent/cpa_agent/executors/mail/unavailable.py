"""Stand-in for the framework's ExecutorUnavailable until the executors work lands on main."""

from __future__ import annotations


class ExecutorUnavailable(Exception):  # noqa: N818 - the framework's name
    """An executor factory cannot offer its executors here (not configured, not supported)."""
