"""The limits each tenant lives under: its callers' call rate and its quotas, from settings, with
per-tenant overrides from a YAML file (CPA_TENANT_LIMITS_PATH):

    tenants:
      acme:
        calls_per_minute: 5000     # per credential (per tenant while calls carry none)
        max_active_jobs: 200       # jobs not yet SUCCEEDED, FAILED or CANCELLED
        max_queued_tasks: 2000     # tasks ready and waiting for an agent

A field left out keeps the setting's value; 0 means no limit. The file is read at start; a
broken one stops the start with `<file>:<line>: <field>: <problem>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cpa_scheduler.planning.catalog_yaml import CatalogError, Locator, parse_yaml
from cpa_scheduler.settings import Settings


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """0 in a field: no limit."""

    calls_per_minute: int
    max_active_jobs: int
    max_queued_tasks: int


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _TenantSpec(_Spec):
    calls_per_minute: int | None = Field(default=None, ge=0)
    max_active_jobs: int | None = Field(default=None, ge=0)
    max_queued_tasks: int | None = Field(default=None, ge=0)


class _FileSpec(_Spec):
    tenants: dict[str, _TenantSpec] = Field(default_factory=dict)


class LimitsTable:
    """Every tenant's limits: the defaults, or its override."""

    def __init__(
        self, default: TenantLimits, overrides: Mapping[str, TenantLimits] | None = None
    ) -> None:
        self.default = default
        self._overrides = MappingProxyType(dict(overrides or {}))

    def of(self, tenant: str) -> TenantLimits:
        return self._overrides.get(tenant, self.default)

    @property
    def any_quota(self) -> bool:
        """Whether some tenant has a quota (else submissions skip the quota check)."""
        return any(
            limits.max_active_jobs or limits.max_queued_tasks
            for limits in (self.default, *self._overrides.values())
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> LimitsTable:
        default = TenantLimits(
            calls_per_minute=settings.rate_limit_per_key,
            max_active_jobs=settings.max_active_jobs_per_tenant,
            max_queued_tasks=settings.max_queued_tasks_per_tenant,
        )
        path = settings.tenant_limits_path
        if path is None:
            return cls(default)
        return cls(default, parse_overrides(read_text(path), default, source=str(path)))


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise CatalogError(
            f"cannot read the tenant limits: {error}", source=str(path), line=None
        ) from None


def parse_overrides(
    text: str, default: TenantLimits, *, source: str = "<string>"
) -> dict[str, TenantLimits]:
    """The per-tenant limits a limits file sets; CatalogError naming file, line and field."""
    data, lines = parse_yaml(
        text, source=source, empty="the tenant limits file is empty; expected 'tenants:'"
    )
    try:
        spec = _FileSpec.model_validate(data)
    except ValidationError as error:
        raise Locator(source=source, data=data, lines=lines).schema_error(error) from None
    return {
        tenant: replace(default, **tenant_spec.model_dump(exclude_none=True))
        for tenant, tenant_spec in spec.tenants.items()
    }
