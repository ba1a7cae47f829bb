"""Test-suite plugins: real services (PostgreSQL, Redis) shared by every suite that needs them."""

pytest_plugins = ("tests.fixtures.services",)
