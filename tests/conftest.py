"""Test-suite plugins: real services (PostgreSQL, Redis) shared by every suite that needs them.

Authentication: servers the tests start run with CPA_INSECURE_LOCAL (loopback, the tenant named
in `x-cpa-tenant`, every right), as before authentication existed; set here once for servers
made in this process, and by tests/cli/conftest.py and tests/fixtures/cluster.py for the
processes they start. The security tests (tests/security/) turn it off explicitly.
"""

import os

os.environ["CPA_INSECURE_LOCAL"] = "true"

pytest_plugins = ("tests.fixtures.services",)

# Rate limits are on by default (CPA_RATE_LIMITS_ENABLED); the suite's servers, in process and
# in the subprocesses that inherit this environment, run without them unless a test turns them
# on (the rate limit tests pass rate_limits_enabled=True or CPA_RATE_LIMITS_ENABLED=true).
# tests/cli/conftest.py and tests/fixtures/cluster.py set both for the processes they start.
os.environ.setdefault("CPA_RATE_LIMITS_ENABLED", "false")
