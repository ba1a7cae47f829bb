"""Test-suite plugins: real services (PostgreSQL, Redis) shared by every suite that needs them."""

import os

pytest_plugins = ("tests.fixtures.services",)

# Rate limits are on by default (CPA_RATE_LIMITS_ENABLED); the suite's servers, in process and
# in the subprocesses that inherit this environment, run without them unless a test turns them
# on (the rate limit tests pass rate_limits_enabled=True or CPA_RATE_LIMITS_ENABLED=true).
os.environ.setdefault("CPA_RATE_LIMITS_ENABLED", "false")
