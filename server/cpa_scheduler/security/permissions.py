"""Who may call what: every RPC of every service needs one permission; each role grants a set.

The one table of the server (docs/SECURITY.md shows it; tests/security/test_permissions.py walks
the descriptors of every service the server registers and fails on an RPC without a rule, so a
new RPC cannot ship unguarded). A method without a rule is refused at run time too (fail closed).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from .principal import Role


class Permission(enum.StrEnum):
    # Anyone, without a credential: liveness and the API's schema (both public anyway: the
    # gateway serves the same schema as /openapi.json).
    PUBLIC = "public"
    JOBS_READ = "jobs.read"
    JOBS_WATCH = "jobs.watch"
    PLANS_PREVIEW = "plans.preview"
    AGENTS_READ = "agents.read"
    JOBS_SUBMIT = "jobs.submit"
    JOBS_CANCEL = "jobs.cancel"
    JOBS_RETRY = "jobs.retry"
    # A change of every job a filter matches (RetryJobs).
    JOBS_REDRIVE = "jobs.redrive"
    # Reserved for the approval methods (none exist yet).
    APPROVALS_DECIDE = "approvals.decide"
    # Metadata `x-cpa-act-as-tenant`: act for another tenant (logged, audited).
    TENANTS_ACT_FOR = "tenants.act_for"
    KEYS_MANAGE = "keys.manage"
    # The tenant's audit trail (ListAuditEntries): who did what, more than its jobs show.
    AUDIT_READ = "audit.read"
    # ExecutorService: an agent's stream and its artifact calls.
    AGENT_CONNECT = "agent.connect"


_SCHEDULER = "/cpa.scheduler.v1.SchedulerService/"
_EXECUTOR = "/cpa.executor.v1.ExecutorService/"
_ADMIN = "/cpa.admin.v1.AdminService/"

METHOD_PERMISSIONS: Final[Mapping[str, Permission]] = MappingProxyType(
    {
        _SCHEDULER + "ScheduleJob": Permission.JOBS_SUBMIT,
        _SCHEDULER + "BatchScheduleJobs": Permission.JOBS_SUBMIT,
        _SCHEDULER + "GetJob": Permission.JOBS_READ,
        _SCHEDULER + "ListJobs": Permission.JOBS_READ,
        _SCHEDULER + "CancelJob": Permission.JOBS_CANCEL,
        _SCHEDULER + "RetryJob": Permission.JOBS_RETRY,
        _SCHEDULER + "RetryJobs": Permission.JOBS_REDRIVE,
        _SCHEDULER + "WatchJob": Permission.JOBS_WATCH,
        # A LAM message may request, cancel or query a job: submitting is the most it does.
        _SCHEDULER + "SendMessage": Permission.JOBS_SUBMIT,
        _SCHEDULER + "PreviewPlan": Permission.PLANS_PREVIEW,
        _SCHEDULER + "ListAgents": Permission.AGENTS_READ,
        _SCHEDULER + "ListArtifacts": Permission.JOBS_READ,
        _SCHEDULER + "DownloadArtifact": Permission.JOBS_READ,
        _SCHEDULER + "ListCallbacks": Permission.JOBS_READ,
        # Delivers the tenant's own notifications again (receivers dedupe by delivery id): a
        # retry of what the caller's jobs already sent, not of any job, so not jobs.redrive.
        _SCHEDULER + "RetryCallbacks": Permission.JOBS_RETRY,
        _SCHEDULER + "ListAuditEntries": Permission.AUDIT_READ,
        # Memory is the tenant's finished jobs (docs/MEMORY.md): reading it is reading jobs;
        # adding a record steers what the planner proposes, as much as submitting does.
        _SCHEDULER + "SearchMemory": Permission.JOBS_READ,
        _SCHEDULER + "PutMemory": Permission.JOBS_SUBMIT,
        # Forgetting steers the planner as much as adding does (and a tenant's own submitters
        # must be able to take back what they or their jobs left there).
        _SCHEDULER + "DeleteMemories": Permission.JOBS_SUBMIT,
        _EXECUTOR + "Connect": Permission.AGENT_CONNECT,
        _EXECUTOR + "UploadArtifact": Permission.AGENT_CONNECT,
        _EXECUTOR + "DownloadArtifact": Permission.AGENT_CONNECT,
        _ADMIN + "CreateApiKey": Permission.KEYS_MANAGE,
        _ADMIN + "ListApiKeys": Permission.KEYS_MANAGE,
        _ADMIN + "RevokeApiKey": Permission.KEYS_MANAGE,
        "/grpc.health.v1.Health/Check": Permission.PUBLIC,
        "/grpc.health.v1.Health/Watch": Permission.PUBLIC,
        "/grpc.health.v1.Health/List": Permission.PUBLIC,
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Permission.PUBLIC,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": Permission.PUBLIC,
    }
)

_VIEWER = frozenset(
    {
        Permission.JOBS_READ,
        Permission.JOBS_WATCH,
        Permission.PLANS_PREVIEW,
        Permission.AGENTS_READ,
    }
)
_SUBMITTER = _VIEWER | {Permission.JOBS_SUBMIT, Permission.JOBS_CANCEL, Permission.JOBS_RETRY}
_OPERATOR = _SUBMITTER | {
    Permission.JOBS_REDRIVE,
    Permission.TENANTS_ACT_FOR,
    Permission.AUDIT_READ,
}

# Roles are not a ladder: an approver need not submit, an agent token reads no jobs.
ROLE_PERMISSIONS: Final[Mapping[Role, frozenset[Permission]]] = MappingProxyType(
    {
        Role.VIEWER: _VIEWER,
        Role.SUBMITTER: _SUBMITTER,
        Role.APPROVER: _VIEWER | {Permission.APPROVALS_DECIDE},
        Role.OPERATOR: _OPERATOR,
        # Everything, the agent stream included (the local agent of `cpa serve --with-agent`
        # runs on the local admin credential), and without the agent tokens' scoping.
        Role.ADMIN: frozenset(Permission) - {Permission.PUBLIC},
        Role.AGENT: frozenset({Permission.AGENT_CONNECT}),
    }
)


def required_permission(method: str) -> Permission | None:
    """The permission `method` (`/pkg.Service/Method`) needs; None: no rule (refused)."""
    return METHOD_PERMISSIONS.get(method)


def granted(roles: frozenset[Role]) -> frozenset[Permission]:
    """Every permission the roles grant together."""
    permissions: frozenset[Permission] = frozenset()
    for role in roles:
        permissions |= ROLE_PERMISSIONS[role]
    return permissions


def allows(roles: frozenset[Role], permission: Permission) -> bool:
    return permission is Permission.PUBLIC or any(
        permission in ROLE_PERMISSIONS[role] for role in roles
    )
