"""Test-suite plugins: real services (PostgreSQL, Redis) shared by every suite that needs them.

Authentication: servers the tests start run with CPA_INSECURE_LOCAL (loopback, the tenant named
in `x-cpa-tenant`, every right), as before authentication existed; set here once for servers
made in this process, and by tests/cli/conftest.py and tests/fixtures/cluster.py for the
processes they start. The security tests (tests/security/) turn it off explicitly.
"""

import logging
import os
from collections.abc import Iterator

import pytest
import structlog

os.environ["CPA_INSECURE_LOCAL"] = "true"

pytest_plugins = (
    "tests.fixtures.services",
    "tests.fixtures.forward_invoice",
    "tests.fixtures.pgvector_server",
)

# Rate limits are on by default (CPA_RATE_LIMITS_ENABLED); the suite's servers, in process and
# in the subprocesses that inherit this environment, run without them unless a test turns them
# on (the rate limit tests pass rate_limits_enabled=True or CPA_RATE_LIMITS_ENABLED=true).
# tests/cli/conftest.py and tests/fixtures/cluster.py set both for the processes they start.
os.environ.setdefault("CPA_RATE_LIMITS_ENABLED", "false")


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """A test that runs a command in process (`cpa agent`, `cpa serve`) configures logging for the
    whole process; later tests' captured stderr would then hold JSON log lines (grpc's,
    alembic's). Each test leaves the root logger without structlog's handlers, at the level it
    found, and structlog unconfigured if it was. (pytest's own capture handlers come and go per
    phase: only the ones logging configuration added are removed.)"""
    root = logging.getLogger()
    level = root.level
    configured = structlog.is_configured()
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if isinstance(handler.formatter, structlog.stdlib.ProcessorFormatter):
                root.removeHandler(handler)
        root.setLevel(level)
        if not configured and structlog.is_configured():
            structlog.reset_defaults()
