"""The per-tenant limits file: overrides over the settings, and errors naming file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpa_scheduler.planning.catalog_yaml import CatalogError
from cpa_scheduler.security.tenant_limits import LimitsTable, TenantLimits, parse_overrides
from cpa_scheduler.settings import Settings

DEFAULT = TenantLimits(calls_per_minute=1000, max_active_jobs=0, max_queued_tasks=0)


def test_overrides_keep_the_defaults_they_do_not_name(tmp_path: Path) -> None:
    path = tmp_path / "limits.yaml"
    path.write_text(
        "tenants:\n  acme:\n    calls_per_minute: 5\n    max_active_jobs: 2\n  beta: {}\n"
    )
    table = LimitsTable.from_settings(Settings(tenant_limits_path=path, rate_limit_per_key=7))
    assert table.of("acme") == TenantLimits(5, 2, 0)
    assert table.of("beta") == TenantLimits(7, 0, 0)
    assert table.of("other") == table.default == TenantLimits(7, 0, 0)
    assert table.any_quota


def test_no_quota_anywhere_means_no_quota_check() -> None:
    assert not LimitsTable(DEFAULT, {"a": DEFAULT}).any_quota
    assert LimitsTable(DEFAULT, {"a": TenantLimits(1, 0, 3)}).any_quota


@pytest.mark.parametrize(
    ("text", "line", "problem"),  # line: where the problem is, or where the parser gave up
    [
        ("tenants:\n  acme:\n    calls_per_minute: -1\n", 3, "greater than or equal to 0"),
        ("tenants:\n  acme:\n    max_jobs: 3\n", 3, "unknown field"),
        ("tenants:\n  acme:\n    max_active_jobs: lots\n", 3, "valid integer"),
        ("tenant:\n  acme: {}\n", 1, "unknown field"),
        ("# nothing yet\n", 1, "empty"),
        ("tenants: [\n", 2, "YAML syntax error"),
        ("tenants:\n  a: &x {max_active_jobs: 1}\n  b: *x\n", 3, "alias"),
    ],
)
def test_a_broken_file_is_refused_with_its_line(text: str, line: int, problem: str) -> None:
    with pytest.raises(CatalogError) as raised:
        parse_overrides(text, DEFAULT, source="limits.yaml")
    assert raised.value.line == line
    assert problem in raised.value.problem
    assert raised.value.message.startswith(f"limits.yaml:{line}: ")


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read the tenant limits"):
        LimitsTable.from_settings(Settings(tenant_limits_path=tmp_path / "missing.yaml"))
